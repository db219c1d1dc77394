"""deploy: place a model on the cluster and run it (vLLM + Ray, llama.cpp RPC).

`modelinfo` reads a model's size and shape from disk (no weights loaded);
`planner` turns that plus each node's GPUs into tensor/pipeline parallel sizes.
Both are pure (modelinfo only reads local files) and import nothing above layer 0.
"""
from .modelinfo import ModelInfo, read_model_info
from .planner import NodeGPUs, Plan, PlanError, plan_model, render_plan

__all__ = ["ModelInfo", "read_model_info", "NodeGPUs", "Plan", "PlanError", "plan_model",
           "render_plan"]
