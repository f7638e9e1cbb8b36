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


def default_class_names(n: int) -> tuple[str, ...]:
    """The names of a model or file that stores none: BloodMNIST's, then class_8, class_9..."""
    return tuple(CLASS_NAMES[i] if i < len(CLASS_NAMES) else f"class_{i}" for i in range(n))
