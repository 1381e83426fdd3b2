"""Data: the task table, LaMP-schema loaders with validation, synthetic data."""

from prlm.data.lamp import SPLITS, Dataset, Example, load_split, save_split, split_stats
from prlm.data.tasks import TASKS, Task, get_task

__all__ = ["SPLITS", "TASKS", "Dataset", "Example", "Task", "get_task", "load_split", "save_split", "split_stats"]
