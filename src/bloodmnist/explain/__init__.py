"""Explanations: Grad-CAM heat maps (captum) and the pictures made from them."""
