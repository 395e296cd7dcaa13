"""Training: task table, datasets, options, the Trainer subclass and one training session (the
command is svdadapt.commands.train)."""

from .tasks import CLASSIFICATION_TASKS, ClassificationTask, classification_task

__all__ = ["CLASSIFICATION_TASKS", "ClassificationTask", "classification_task"]
