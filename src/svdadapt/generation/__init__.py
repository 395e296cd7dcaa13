"""Generation: prompts (flags, files, stdin), the sampling settings, the model to generate with (a run,
a model, or a PEFT adapter on its base), and streamed generation through the chat template."""
