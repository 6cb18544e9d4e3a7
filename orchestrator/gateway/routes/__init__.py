"""The gateway's endpoints, one `APIRouter` per resource (the app includes them in order):

health    GET  /healthz /readyz /metrics
models    GET  /v1/models
experts   GET  /v1/experts
agents    GET  /v1/agents, POST /v1/feedback
route     POST /v1/route
chat      POST /v1/chat/completions
"""
