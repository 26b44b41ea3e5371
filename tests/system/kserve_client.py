# SPDX-License-Identifier: Apache-2.0
"""A small KServe v2 (Open Inference Protocol) REST client, for the system tests.

Written from the protocol documents only, not from loom's code: the KServe "Predict Protocol -
Version 2" / Open Inference Protocol REST specification (health, server and model metadata,
inference request and response objects, tensor data in row-major order as flat or nested JSON
arrays, the {"error": "..."} body) and Triton's extensions: binary_tensor_data (a JSON header of
Inference-Header-Content-Length bytes followed by the raw little-endian tensors of every input
or output that carries parameters.binary_data_size, in the order they are listed; a BYTES
element is a 4-byte little-endian length followed by its bytes), model_repository
(POST /v2/repository/index, .../models/{m}/load and /unload), model_configuration
(GET .../config) and statistics (GET .../stats).

numpy in, numpy out: `infer()` takes {name: ndarray} (or InferInput objects for full control)
and returns an InferResult whose as_numpy(name) gives each output with its datatype and shape.
Failures raise InferenceServerError with the HTTP status, the server's message and headers.
"""

import json
import struct

import numpy as np
import requests

# The protocol's tensor datatypes and their numpy equivalents (BYTES: numpy object arrays).
DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


def np_to_datatype(dtype):
    dtype = np.dtype(dtype)
    for name, t in DTYPES.items():
        if np.dtype(t) == dtype:
            return name
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    raise ValueError(f"no v2 datatype for numpy {dtype}")


def datatype_to_np(datatype):
    try:
        return np.dtype(DTYPES[datatype])
    except KeyError:
        raise ValueError(f"unknown v2 datatype {datatype!r}") from None


def serialize_bytes(arr):
    """BYTES tensor -> binary: each element a uint32 little-endian length, then its bytes."""
    out = bytearray()
    for v in np.asarray(arr, dtype=object).reshape(-1):
        b = v if isinstance(v, (bytes, bytearray)) else str(v).encode()
        out += struct.pack("<I", len(b)) + b
    return bytes(out)


def deserialize_bytes(buf, count=None):
    """Inverse of serialize_bytes: a flat list of bytes objects."""
    items, off = [], 0
    while off < len(buf) and (count is None or len(items) < count):
        if off + 4 > len(buf):
            raise ValueError("truncated BYTES element length")
        (n,) = struct.unpack_from("<I", buf, off)
        off += 4
        if off + n > len(buf):
            raise ValueError("truncated BYTES element")
        items.append(bytes(buf[off:off + n]))
        off += n
    if off != len(buf):
        raise ValueError(f"{len(buf) - off} trailing bytes after the BYTES elements")
    return items


def tensor_to_bytes(arr, datatype):
    if datatype == "BYTES":
        return serialize_bytes(arr)
    a = np.ascontiguousarray(arr, dtype=datatype_to_np(datatype))
    return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def bytes_to_tensor(buf, datatype, shape):
    if datatype == "BYTES":
        items = deserialize_bytes(buf)
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dt = datatype_to_np(datatype).newbyteorder("<")
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if len(buf) != expected:
        raise ValueError(f"{len(buf)} bytes of binary data for {datatype} {shape} "
                         f"(expected {expected})")
    return np.frombuffer(buf, dtype=dt).reshape(shape)


def _json_element(v, datatype):
    """One element of a JSON tensor: BOOL as true/false, integers as integers, floats as
    numbers (NaN and +/-Infinity as the bare tokens Python's json writes), BYTES as str."""
    if datatype == "BOOL":
        return bool(v)
    if datatype == "BYTES":
        return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)
    if datatype.startswith(("INT", "UINT")):
        return int(v)
    return float(v)


def tensor_to_json(arr, datatype, nested=False):
    """The `data` member for `arr`: flat row-major by default, or nested like the shape."""
    a = np.asarray(arr)
    flat = [_json_element(v, datatype) for v in a.reshape(-1).tolist()]
    if not nested or a.ndim <= 1:
        return flat
    out = flat
    for d in reversed(a.shape[1:]):
        out = [out[i:i + d] for i in range(0, len(out), d)]
    return out


class InferenceServerError(Exception):
    """A non-2xx answer: status, the server's error message, and the response."""

    def __init__(self, status, message, response=None):
        super().__init__(f"[{status}] {message}")
        self.status = status
        self.message = message
        self.response = response

    def header(self, name, default=None):
        if self.response is None:
            return default
        return self.response.headers.get(name, default)


class InferInput:
    """One input tensor of a request."""

    def __init__(self, name, shape, datatype, data=None, binary=False, nested=False,
                 parameters=None):
        self.name = name
        self.shape = list(shape)
        self.datatype = datatype
        self.data = data
        self.binary = binary
        self.nested = nested
        self.parameters = dict(parameters or {})

    @classmethod
    def from_numpy(cls, name, arr, datatype=None, binary=False, nested=False):
        arr = np.asarray(arr)
        return cls(name, arr.shape, datatype or np_to_datatype(arr.dtype), arr, binary, nested)

    def to_json(self):
        """(JSON object, binary blob or None)."""
        obj = {"name": self.name, "shape": self.shape, "datatype": self.datatype}
        params = dict(self.parameters)
        blob = None
        if self.binary:
            blob = tensor_to_bytes(self.data, self.datatype)
            params["binary_data_size"] = len(blob)
        else:
            obj["data"] = tensor_to_json(self.data, self.datatype, self.nested)
        if params:
            obj["parameters"] = params
        return obj, blob


class InferRequestedOutput:
    def __init__(self, name, binary=False, classification=0, parameters=None):
        self.name = name
        self.binary = binary
        self.classification = classification
        self.parameters = dict(parameters or {})

    def to_json(self):
        params = dict(self.parameters)
        if self.binary:
            params["binary_data"] = True
        if self.classification:
            params["classification"] = self.classification
        obj = {"name": self.name}
        if params:
            obj["parameters"] = params
        return obj


class InferResult:
    """An inference response: the JSON part (`response`), the HTTP response (`http`) and the
    outputs decoded to numpy."""

    def __init__(self, http):
        self.http = http
        body = http.content
        hlen = http.headers.get("Inference-Header-Content-Length")
        if hlen is not None:
            n = int(hlen)
            if not 0 <= n <= len(body):
                raise ValueError(f"Inference-Header-Content-Length {n} outside 0..{len(body)}")
            header, rest = body[:n], body[n:]
        else:
            header, rest = body, b""
        self.response = json.loads(header)
        self.binary_tail = rest
        self._arrays = {}
        off = 0
        for out in self.response.get("outputs", []):
            params = out.get("parameters") or {}
            shape = out["shape"]
            if "binary_data_size" in params:
                size = params["binary_data_size"]
                if off + size > len(rest):
                    raise ValueError(f"output {out['name']}: {size} bytes announced, "
                                     f"{len(rest) - off} left")
                self._arrays[out["name"]] = bytes_to_tensor(rest[off:off + size],
                                                            out["datatype"], shape)
                off += size
            elif "data" in out:
                dt = out["datatype"]
                flat = np.array(out["data"], dtype=object if dt == "BYTES"
                                else datatype_to_np(dt)).reshape(-1)
                self._arrays[out["name"]] = flat.reshape(shape)
        if off != len(rest):
            raise ValueError(f"{len(rest) - off} bytes of binary data belong to no output")
        self.binary_layout = off

    def as_numpy(self, name):
        return self._arrays.get(name)

    def output(self, name):
        for out in self.response.get("outputs", []):
            if out["name"] == name:
                return out
        return None

    def get_response(self):
        return self.response


class InferenceServerClient:
    """Client for one server's v2 REST API (base URL like http://127.0.0.1:8000)."""

    def __init__(self, url, timeout=30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def close(self):
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- transport ----

    def request(self, method, path, body=None, headers=None, json_body=None):
        """Raw call: the requests.Response, whatever the status."""
        h = dict(headers or {})
        data = body
        if json_body is not None:
            data = json.dumps(json_body).encode()
            h.setdefault("Content-Type", "application/json")
        return self.session.request(method, self.url + path, data=data, headers=h,
                                    timeout=self.timeout)

    @staticmethod
    def _raise(r):
        if 200 <= r.status_code < 300:
            return
        try:
            msg = r.json().get("error", r.text)
        except ValueError:
            msg = r.text
        raise InferenceServerError(r.status_code, msg, r)

    def _get_json(self, path):
        r = self.request("GET", path)
        self._raise(r)
        return r.json()

    @staticmethod
    def _model_path(model, version=None):
        p = f"/v2/models/{model}"
        if version not in (None, ""):
            p += f"/versions/{version}"
        return p

    # ---- health and metadata ----

    def is_server_live(self):
        return self.request("GET", "/v2/health/live").status_code == 200

    def is_server_ready(self):
        return self.request("GET", "/v2/health/ready").status_code == 200

    def is_model_ready(self, model, version=None):
        return self.request("GET", self._model_path(model, version) + "/ready").status_code == 200

    def server_metadata(self):
        return self._get_json("/v2")

    def model_metadata(self, model, version=None):
        return self._get_json(self._model_path(model, version))

    def model_config(self, model, version=None):
        return self._get_json(self._model_path(model, version) + "/config")

    # ---- inference ----

    def build_request(self, inputs, outputs=None, request_id=None, parameters=None):
        """(body bytes, headers) for an inference request."""
        objs, blobs = [], []
        for inp in inputs:
            obj, blob = inp.to_json()
            objs.append(obj)
            if blob is not None:
                blobs.append(blob)
        req = {"inputs": objs}
        if request_id is not None:
            req["id"] = request_id
        if parameters:
            req["parameters"] = parameters
        if outputs is not None:
            req["outputs"] = [o.to_json() for o in outputs]
        header = json.dumps(req).encode()
        headers = {}
        if blobs:
            headers["Inference-Header-Content-Length"] = str(len(header))
            headers["Content-Type"] = "application/octet-stream"
            return header + b"".join(blobs), headers
        headers["Content-Type"] = "application/json"
        return header, headers

    def infer(self, model, inputs, outputs=None, request_id=None, parameters=None,
              version=None, binary_inputs=False, binary_outputs=False, headers=None):
        """inputs: list of InferInput, or {name: ndarray}; outputs: list of
        InferRequestedOutput or output names. Returns InferResult."""
        if isinstance(inputs, dict):
            inputs = [InferInput.from_numpy(n, a, binary=binary_inputs)
                      for n, a in inputs.items()]
        if outputs is not None:
            outputs = [o if isinstance(o, InferRequestedOutput)
                       else InferRequestedOutput(o, binary=binary_outputs) for o in outputs]
        elif binary_outputs:
            parameters = dict(parameters or {}, binary_data_output=True)
        body, h = self.build_request(inputs, outputs, request_id, parameters)
        h.update(headers or {})
        r = self.request("POST", self._model_path(model, version) + "/infer", body=body,
                         headers=h)
        self._raise(r)
        return InferResult(r)

    def infer_raw(self, model, body, headers=None, version=None):
        """POST arbitrary bytes to the infer endpoint; the requests.Response."""
        return self.request("POST", self._model_path(model, version) + "/infer", body=body,
                            headers=headers)

    # ---- repository, statistics ----

    def repository_index(self, ready=None):
        body = None if ready is None else {"ready": bool(ready)}
        r = self.request("POST", "/v2/repository/index", json_body=body)
        self._raise(r)
        return r.json()

    def load_model(self, model, config=None, files=None):
        """config: a dict or JSON text (sent as the string parameter 'config');
        files: {"<version>/<path>": bytes} (base64, Triton's file: override)."""
        params = {}
        if config is not None:
            params["config"] = config if isinstance(config, str) else json.dumps(config)
        if files:
            import base64
            for k, v in files.items():
                params["file:" + k] = base64.b64encode(v).decode()
        body = {"parameters": params} if params else None
        r = self.request("POST", f"/v2/repository/models/{model}/load", json_body=body)
        self._raise(r)
        return r

    def unload_model(self, model, unload_dependents=False):
        r = self.request("POST", f"/v2/repository/models/{model}/unload",
                         json_body={"parameters": {"unload_dependents": unload_dependents}})
        self._raise(r)
        return r

    def statistics(self, model=None, version=None):
        path = "/v2/models/stats" if model is None else self._model_path(model, version) + "/stats"
        return self._get_json(path)
