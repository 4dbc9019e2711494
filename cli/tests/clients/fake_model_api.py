#!/usr/bin/env python3
"""A fake model API on 127.0.0.1 for driving the real agent clients offline
(cli/tests/real_clients.rs). It answers every request with a short text turn and records
each request body as one JSON line, so a test can check what the model was shown.

Dialects, by path:
  POST .../v1/messages            Anthropic Messages (Claude Code), SSE when "stream"
  POST .../v1/responses           OpenAI Responses (Codex), SSE
  POST .../v1/chat/completions    OpenAI Chat Completions (OpenCode), SSE when "stream"
  GET  .../models                 a one-model list
  HEAD/GET anything else          200 {} (Claude Code probes /api/hello)

usage: fake_model_api.py LOG_FILE PORT_FILE
It binds an ephemeral port, writes it to PORT_FILE, and serves until killed.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG, PORT_FILE = sys.argv[1], sys.argv[2]
lock = threading.Lock()
count = [0]


def record(entry):
    with lock:
        count[0] += 1
        entry["n"] = count[0]
        with open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")
        return count[0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply_json(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def reply_sse(self, events):
        payload = b"".join(events)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def do_HEAD(self):
        self.reply_json({})

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            return self.reply_json({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        self.reply_json({})

    def do_POST(self):
        size = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(size) if size else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        n = record({"t": time.time(), "path": self.path, "body": body})
        text = "Noted (fake reply %d)." % n
        path = self.path.split("?")[0].rstrip("/")
        if path.endswith("/messages/count_tokens"):
            return self.reply_json({"input_tokens": 100})
        if path.endswith("/messages"):
            return self.anthropic(body, n, text)
        if path.endswith("/responses"):
            return self.openai_responses(n, text)
        if path.endswith("/chat/completions"):
            return self.chat(body, n, text)
        self.reply_json({"error": {"message": "unsupported path %s" % self.path}}, 404)

    def anthropic(self, body, n, text):
        model = body.get("model", "claude-fake")
        message = {
            "id": "msg_%d" % n, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }
        if not body.get("stream"):
            message.update(content=[{"type": "text", "text": text}], stop_reason="end_turn")
            return self.reply_json(message)

        def ev(name, data):
            return ("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode()

        self.reply_sse([
            ev("message_start", {"type": "message_start", "message": message}),
            ev("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
            ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": text}}),
            ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                 "usage": {"output_tokens": 5}}),
            ev("message_stop", {"type": "message_stop"}),
        ])

    def openai_responses(self, n, text):
        rid, mid = "resp_%d" % n, "msg_%d" % n
        done = {"type": "message", "id": mid, "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}
        events = [
            {"type": "response.created", "response": {"id": rid}},
            {"type": "response.output_item.added", "output_index": 0,
             "item": {"type": "message", "id": mid, "role": "assistant", "content": []}},
            {"type": "response.content_part.added", "output_index": 0, "item_id": mid,
             "content_index": 0, "part": {"type": "output_text", "text": ""}},
            {"type": "response.output_text.delta", "output_index": 0, "item_id": mid,
             "content_index": 0, "delta": text},
            {"type": "response.output_item.done", "output_index": 0, "item": done},
            {"type": "response.completed", "response": {"id": rid, "usage": {
                "input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 15}}},
        ]
        self.reply_sse([("event: %s\ndata: %s\n\n" % (e["type"], json.dumps(e))).encode() for e in events])

    def chat(self, body, n, text):
        cid, created = "chatcmpl-%d" % n, int(time.time())
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            return self.reply_json({
                "id": cid, "object": "chat.completion", "created": created, "model": "fake-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": usage,
            })

        def chunk(choices, **extra):
            o = {"id": cid, "object": "chat.completion.chunk", "created": created,
                 "model": "fake-model", "choices": choices}
            o.update(extra)
            return b"data: " + json.dumps(o).encode() + b"\n\n"

        self.reply_sse([
            chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
            chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}]),
            chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            chunk([], usage=usage),
            b"data: [DONE]\n\n",
        ])


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
