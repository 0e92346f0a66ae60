"""The names of the files in a saved model folder, importable without torch (the numpy query path reads
them, :mod:`vlret.models.text_queries`)."""

#: a saved model's settings, every kind of model
MODEL_CONFIG_FILE = "vlret_model.json"
#: conse's class embeddings
CLASS_EMBEDDINGS_FILE = "class_embeddings.safetensors"
