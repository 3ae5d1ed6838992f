"""What a trained model is used for, the same way for every modality: generate (batches, labels,
guidance), complete (one table of completion methods), vocode, and the train stage."""
