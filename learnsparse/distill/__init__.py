"""Knowledge distillation: a student trains towards a teacher's outputs (`distill=kd`)."""
from .kd import KnowledgeDistillation

__all__ = ["KnowledgeDistillation"]
