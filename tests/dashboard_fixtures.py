"""A small store whose corpus holds HTML (a `<script>` token among others), coders that compute planted features
from it exactly, and a minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (stdlib only).

Store activations (d = 8): column k holds rule k, and the coders read them through an identity encoder.
    0 the `<script>` token (lexical)         1 " whale" (context-free)     2 every token but " the" (minority OFF)
    3 dead                                   4 always on                   5 random 10% of tokens
    6 " <b>bold</b>"                         7 random 30% with a random magnitude (for SAEs)
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bitlens.coders.bae import BAEConfig, BinaryAutoencoder
from bitlens.coders.registry import save_coder
from bitlens.coders.sae import ReLUSAE, SAEConfig
from bitlens.data.store import StoreWriter

SCRIPT = "<script>alert('pwned')</script>"
VOCAB = [" the", " whale", " sea", SCRIPT, " <b>bold</b>", " & co", "\n", ".", " ship", " rose"]
TOK = {t: i for i, t in enumerate(VOCAB)}
D = 8
LIVE = [0, 1, 2, 5, 6, 7]


def make_html_store(path: Path, n_docs: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    writer = StoreWriter.open(path, settings={"html": seed}, layers=[0], dim=D, dtype="float32", shard_rows=500,
                              documents=lambda: [{"index": i, "id": f"doc<{i}>"} for i in range(n_docs)],
                              token_texts=lambda: list(VOCAB))
    for doc in range(n_docs):
        freq = [.25, .1, .1, .05, .05, .05, .05, .15, .1, .1]
        words = [VOCAB[int(i)] for i in rng.choice(len(VOCAB), size=60, p=freq)]
        x = np.zeros((len(words), D), dtype=np.float32)
        for i, w in enumerate(words):
            x[i, 0] = w == SCRIPT
            x[i, 1] = w == " whale"
            x[i, 2] = w != " the"
            x[i, 4] = 1.0
            x[i, 5] = rng.random() < 0.1
            x[i, 6] = w == " <b>bold</b>"
            x[i, 7] = rng.uniform(0.5, 2.0) if rng.random() < 0.3 else 0.0
        meta = np.array([[doc, i // 30, i // 10, 1 + i % 30, TOK[w]] for i, w in enumerate(words)], dtype=np.int32)
        writer.add({0: x}, meta, cursor=(doc + 1, 0), excluded={"special": 0, "first": 0}, sequences=2)
    writer.finish()
    return path


def _identity_coder(model, path: Path, decoder_bias: float) -> Path:
    """Feature j reads and writes coordinate j, firing above 0.25."""
    with torch.no_grad():
        model.encoder.weight.copy_(torch.eye(D))
        model.encoder.bias.fill_(-0.25)
        model.decoder.weight.copy_(torch.eye(D))
        model.decoder.bias.fill_(decoder_bias)
    save_coder(model, path)
    return path


def make_bae(path: Path) -> Path:
    return _identity_coder(BinaryAutoencoder(BAEConfig(d_in=D, d_code=D)), path, 0.0)


def make_sae(path: Path) -> Path:
    return _identity_coder(ReLUSAE(SAEConfig(d_in=D, d_code=D)), path, 0.25)


# --------------------------------------------------------------------------------------------- headless Chromium


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3: commands in, fd 4: replies out)."""

    def __init__(self, exe: str, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="bitlens-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds():  # chromium expects the protocol on exactly fds 3 and 4
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire_fds, pass_fds=(3, 4))  # fds above 4 are closed after wire_fds
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("no reply from chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read_message(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    def open(self, url: str) -> None:
        """Load ``url`` as a new document (via about:blank, so a #hash change also reloads the page)."""
        for target in ("about:blank", url):
            self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
            self.call("Page.navigate", session=True, url=target)
            self.wait_event("Page.loadEventFired")

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"javascript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads reported so far."""
        self.call("Runtime.evaluate", session=True, expression="0")  # drain pending events
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                details = p.get("exceptionDetails", {})
                what = details.get("exception", {}).get("description") or details.get("text")
                out.append(f'{details.get("url", "")}: {what}')
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args", []))[:300])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", "")[:300])
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)
