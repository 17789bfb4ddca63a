"""Downloads against a local HTTP server on 127.0.0.1 only: success, checksum mismatch, 404, refused."""

import hashlib
import http.server
import io
import json
import socket
import threading
import zipfile

import pytest
from click.testing import CliRunner

from bertrt.cli import cli
from bertrt.convert import download as dl
from bertrt.errors import BertrtError

TRAIN = json.dumps({"version": "1.1", "data": []}).encode()
DEV = json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": []}]}).encode()


def zip_bytes(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


CKPT = zip_bytes({"bert_config.json": "{}", "vocab.txt": "[PAD]\n", "model.ckpt.index": "x"})


@pytest.fixture(scope="module")
def server():
    files = {"/squad/train-v1.1.json": TRAIN, "/squad/dev-v1.1.json": DEV,
             "/ngc/bert_tf_ckpt_base_qa_squad11_amp_384/versions/19.03.1/zip": CKPT,
             "/ngc/bert_tf_ckpt_large_qa_squad11_amp_128/versions/19.03.1/zip": b"not a zip"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def squad_with_test_checksums(monkeypatch):
    items = tuple(dl.RemoteFile(n, n, sha(d)) for n, d in (("train-v1.1.json", TRAIN), ("dev-v1.1.json", DEV)))
    monkeypatch.setitem(dl.ITEMS, "squad-v1.1", (dl.SQUAD_BASE_URL, items))


def invoke(*args):
    return CliRunner().invoke(cli, ["zoo", "download", *map(str, args)])


def test_squad_download_verified(server, tmp_path, squad_with_test_checksums):
    result = invoke("squad-v1.1", "-o", tmp_path, "--base-url", f"{server}/squad")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "train-v1.1.json").read_bytes() == TRAIN
    assert (tmp_path / "dev-v1.1.json").read_bytes() == DEV
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-v1.1.json", "train-v1.1.json"]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    # the real SQuAD checksums do not match the test files
    result = invoke("squad-v1.1", "-o", tmp_path, "--base-url", f"{server}/squad")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"Error: {server}/squad/train-v1.1.json: sha256 mismatch: got {sha(TRAIN)}")
    assert list(tmp_path.iterdir()) == []


def test_fetch_checks_sha256(server, tmp_path):
    dest = tmp_path / "dev.json"
    assert dl.fetch(f"{server}/squad/dev-v1.1.json", dest, sha(DEV)) == sha(DEV)
    assert dest.read_bytes() == DEV
    with pytest.raises(BertrtError, match="sha256 mismatch"):
        dl.fetch(f"{server}/squad/dev-v1.1.json", tmp_path / "again.json", "0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.json"]


def test_checkpoint_zip_is_unpacked(server, tmp_path):
    result = invoke("bert-base-384", "-o", tmp_path, "--base-url", f"{server}/ngc")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "bert_tf_ckpt_base_qa_squad11_amp_384_19.03.1"
    assert sorted(p.name for p in folder.iterdir()) == ["bert_config.json", "model.ckpt.index", "vocab.txt"]
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # the zip is gone


def test_not_a_zip_leaves_nothing(server, tmp_path):
    result = invoke("bert-large-128", "-o", tmp_path, "--base-url", f"{server}/ngc")
    assert result.exit_code == 1 and "not a zip archive" in result.output
    assert list(tmp_path.iterdir()) == []


def test_404(server, tmp_path):
    result = invoke("bert-large-384", "-o", tmp_path, "--base-url", f"{server}/ngc")
    assert result.exit_code == 1
    url = f"{server}/ngc/bert_tf_ckpt_large_qa_squad11_amp_384/versions/19.03.1/zip"
    assert result.output.strip().splitlines()[-1] == f"Error: {url}: HTTP 404 Not Found"
    assert list(tmp_path.iterdir()) == []


def test_connection_refused(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = invoke("squad-v1.1", "-o", tmp_path / "out", "--base-url", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (f"Error: http://127.0.0.1:{port}/train-v1.1.json: cannot connect: "
                                     "Connection refused")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_known_urls():
    urls = {name: url for name, url, _ in dl.describe()}
    assert dl.describe()[0] == ("squad-v1.1", "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json",
                                "sha256 known")
    assert urls["bert-large-128"] == ("https://api.ngc.nvidia.com/v2/models/nvidia/"
                                      "bert_tf_ckpt_large_qa_squad11_amp_128/versions/19.03.1/zip")
