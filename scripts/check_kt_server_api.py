"""What a KTransformers source tree's OpenAI endpoints answer (patch 0004 of the 0.2.1.post1 series), no GPU.

The tree's own endpoint, schema and config modules run under FastAPI's test client; only the model
backend (`get_interface`, which needs the CUDA build) is replaced by one that yields "Hel", "lo".
Needs fastapi, httpx, pydantic 2, pyyaml, sqlalchemy, colorlog, numpy and torch (CPU is enough).
Usage: HOME=$(mktemp -d) python scripts/check_kt_server_api.py TREE
"""
import importlib.util
import json
import sys
import types

tree = sys.argv[1]
sys.path.insert(0, tree)
async def inference(messages, id):
    for t in ["Hel", "lo"]:
        yield t
fake = types.ModuleType("ktransformers.server.utils.create_interface")
fake.get_interface = lambda: types.SimpleNamespace(inference=inference)
sys.modules["ktransformers.server.utils.create_interface"] = fake
from ktransformers.server.config.config import Config
Config().model_name = "DeepSeek-V3-tiny"
spec = importlib.util.spec_from_file_location("chat_endpoints", tree + "/ktransformers/server/api/openai/endpoints/chat.py")
chat = importlib.util.module_from_spec(spec); spec.loader.exec_module(chat)
from fastapi import FastAPI
from fastapi.testclient import TestClient
app = FastAPI(); app.include_router(chat.router, prefix="/v1")
c = TestClient(app)
print(json.dumps(c.get("/v1/models").json()))
r = c.post("/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "hi"}]}).json()
print(r["object"], json.dumps(r["choices"]))
s = c.post("/v1/chat/completions", json={"model": "x", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
print(s.text.replace("\n", "|")[:400])
