"""onnxruntime scoring: runtime, model source, HTTP app. Never imports torch or mlflow."""
