"""The ISIC 2019 classes: ground-truth column codes and the folder names we give them."""

# Ground-truth CSV column -> readable class name (the class folder name). UNK has no images.
CLASS_NAMES = {
    "AK": "Actinic keratosis",
    "BCC": "Basal cell carcinoma",
    "BKL": "Benign keratosis",
    "DF": "Dermatofibroma",
    "MEL": "Melanoma",
    "NV": "Melanocytic nevus",
    "SCC": "Squamous cell carcinoma",
    "VASC": "Vascular lesion",
}
# The seed tutorial's naming, for users who compare with it: it called nevi "None of the above".
SEED_CLASS_NAMES = {**CLASS_NAMES, "NV": "None of the above"}
