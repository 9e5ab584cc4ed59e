"""The flows: the steps as functions, the papermill runs, the GPU study and one question's letters."""
