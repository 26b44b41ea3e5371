# SPDX-License-Identifier: Apache-2.0
"""The FastAPI peer of bench/inference.sh: the KServe v2 REST infer route for one XGBoost model,
served by uvicorn (one worker, uvloop, httptools, no access log), predicting with Python
XGBoost's Booster.inplace_predict on one thread. It loads the same model.json as loom, parses the
same request JSON (json.loads of the raw body, no pydantic model, so the peer is as fast as
FastAPI idiomatically gets) and answers the same response shape:
  POST /v2/models/{model}/infer  {"inputs":[{"name":"input__0","shape":[N,F],"datatype":"FP32",
                                 "data":[...]}]}
  -> {"model_name":...,"model_version":"1","outputs":[{"name":"output__0","datatype":"FP32",
      "shape":[N,1],"data":[...]}]}
plus GET /v2/health/ready and /v2/models/{model}/ready for the readiness wait.

Usage: /usr/bin/python3 bench/peers/fastapi_v2.py MODEL_NAME MODEL_JSON PORT   (listens on
127.0.0.1 only). Needs Debian's python3-fastapi, python3-uvicorn, python3-uvloop,
python3-httptools, python3-xgboost and python3-numpy.
"""
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
import xgboost as xgb  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import Response  # noqa: E402

NAME, MODEL_FILE = sys.argv[1], sys.argv[2]
booster = xgb.Booster(model_file=MODEL_FILE)
booster.set_param({"nthread": 1})
NFEAT = booster.num_features()
app = FastAPI()


def error(status, msg):
    return Response(json.dumps({"error": msg}), status_code=status, media_type="application/json")


@app.get("/v2/health/ready")
async def health_ready():
    return Response(status_code=200)


@app.get("/v2/models/{model}/ready")
async def model_ready(model: str):
    if model != NAME:
        return error(404, f"unknown model '{model}'")
    return Response(json.dumps({"name": NAME, "ready": True}), media_type="application/json")


@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request):
    if model != NAME:
        return error(404, f"unknown model '{model}'")
    try:
        req = json.loads(await request.body())
        inp = req["inputs"][0]
        if inp["name"] != "input__0" or inp["datatype"] != "FP32":
            return error(400, "expected input__0 of datatype FP32")
        shape = inp["shape"]
        x = np.asarray(inp["data"], dtype=np.float32).reshape(shape)
        if x.ndim != 2 or x.shape[1] != NFEAT:
            return error(400, f"expected shape [N,{NFEAT}]")
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return error(400, f"bad request: {e}")
    pred = booster.inplace_predict(x).reshape(x.shape[0], -1)
    out = {
        "model_name": NAME,
        "model_version": "1",
        "outputs": [{"name": "output__0", "datatype": "FP32", "shape": list(pred.shape),
                     "data": pred.ravel().tolist()}],
    }
    return Response(json.dumps(out, separators=(",", ":")), media_type="application/json")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), workers=1, loop="uvloop",
                http="httptools", access_log=False, log_level="warning")
