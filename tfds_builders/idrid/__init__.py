"""IDRiD (Indian Diabetic Retinopathy Image Dataset) TFDS builder (package style): grading and segmentation."""
from tfds_builders.idrid.idrid_dataset_builder import DME_RISKS, DR_GRADES, LESIONS, Idrid, IdridConfig

__all__ = ['DME_RISKS', 'DR_GRADES', 'Idrid', 'IdridConfig', 'LESIONS']
