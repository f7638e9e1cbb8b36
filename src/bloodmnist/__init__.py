"""bloodmnist: train, evaluate and serve blood-cell classifiers on BloodMNIST."""

__version__ = "0.1.0"

#: MedMNIST label order (index = label value in the npz files).
CLASS_NAMES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "immature_granulocyte",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
NUM_CLASSES = len(CLASS_NAMES)
