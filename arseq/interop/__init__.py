"""Models in and out of other ecosystems: Hugging Face folders (`hf`) and starting runs from weights (`init_from`)."""
