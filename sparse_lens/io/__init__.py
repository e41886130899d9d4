"""Reading and writing models: sparse checkpoints, the OpenAI importer, bridge export."""
