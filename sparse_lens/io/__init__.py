"""Reading and writing models: sparse checkpoints, the OpenAI importer, TransformerBridge and nnsight interop."""
