"""Training: task and training options, datasets, the Trainer subclass and one training session (the
command is svdadapt.commands.train; the task table, which evaluation reads too, is svdadapt.data.tasks)."""
