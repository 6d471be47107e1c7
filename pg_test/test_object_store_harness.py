"""Self-tests of the object-store harness (harness/object_store.py), no
PostgreSQL needed: SeaweedFS and rclone, each over HTTP and over TLS with
the test CA, started and stopped here; our S3 client's put/get/list/delete,
a wrong secret refused, an unfinished multipart upload listed and aborted by
hand, two stores side by side, and no port left open after a stop."""
import os
import ssl

from harness import SkipTest
from harness.cluster import TestDir, run
from harness.object_store import (Rclone, S3Client, S3Error, SeaweedFS, parse_xml, port_is_open,
                                  store_binary, tls_files)

TEST_TIMEOUT = 120
BUCKET = "pgbb-selftest"
KEY, SECRET = "selftest-key", "selftest-secret-0123456789"

OBJECTS = {
    "top": b"",
    "a/one": b"one",
    "a/b/two": os.urandom(100_000),
    "a/b/with space+plus%.txt": b"odd key",
    "c/three": b"three" * 1000,
}


def exercise(store_class, tls):
    with TestDir(prefix="pgbb-s3-") as td:
        store = store_class(td.subdir("s3"), BUCKET, KEY, SECRET, tls=tls)
        with store:
            scheme = "https" if tls else "http"
            assert store.endpoint == f"{scheme}://127.0.0.1:{store.port}", store.endpoint
            assert (store.ca_file is not None) == tls, store.ca_file
            check_objects(store)
            check_wrong_secret(store)
            check_multipart_listing(store)
            if tls:
                check_tls(store)
            ports = store.ports
            closed = [p for p in ports if not port_is_open(p)]
            assert not closed, f"{store.kind}: ports {closed} of {ports} not open"
        assert not store.is_running()
        still_open = [p for p in ports if port_is_open(p)]
        assert not still_open, f"{store.kind}: ports still open after stop: {still_open}"


def check_objects(store):
    c = store.client()
    assert c.bucket_exists(), "bucket missing"
    assert store.list_keys() == [], store.list_keys()
    for key, data in OBJECTS.items():
        c.put_object(key, data)
    listed = c.list_objects(max_keys=2)   # several pages
    assert [o.key for o in listed] == sorted(OBJECTS), listed
    assert {o.key: o.size for o in listed} == {k: len(v) for k, v in OBJECTS.items()}, listed
    assert store.list_keys("a/") == sorted(k for k in OBJECTS if k.startswith("a/"))
    assert store.list_keys("a/b/") == ["a/b/two", "a/b/with space+plus%.txt"]
    assert store.list_keys("nothing/") == []
    for key, data in OBJECTS.items():
        assert c.get_object(key) == data, key
    c.put_object("a/one", b"replaced")
    assert c.get_object("a/one") == b"replaced"
    c.delete_object("a/one")
    c.delete_object("a/one")              # absent: still 2xx
    try:
        c.get_object("a/one")
        raise AssertionError("deleted object still readable")
    except S3Error as exc:
        assert exc.status == 404 and exc.code == "NoSuchKey", exc
    for key in OBJECTS:
        c.delete_object(key)
    assert store.list_keys() == [], store.list_keys()


def check_wrong_secret(store):
    bad = store.client(secret=SECRET + "x")
    for attempt in (lambda: bad.put_object("x", b"x"), lambda: bad.list_objects()):
        try:
            attempt()
            raise AssertionError("a wrong secret was accepted")
        except S3Error as exc:
            assert exc.status == 403 and exc.code == "SignatureDoesNotMatch", exc
    assert store.list_keys() == [], "a refused PUT stored something"


def check_multipart_listing(store):
    c = store.client()
    assert c.list_multipart_uploads() == []
    resp = c.call("POST", "mp/unfinished", query={"uploads": ""})
    upload_id = parse_xml(resp.body).findtext(".//UploadId")
    assert upload_id, resp.body
    part = c.call("PUT", "mp/unfinished", query={"partNumber": "1", "uploadId": upload_id},
                  body=b"p" * 1000)
    assert part.headers.get("etag"), part.headers
    assert c.list_multipart_uploads() == [("mp/unfinished", upload_id)]
    resp = c.request("DELETE", "mp/unfinished", query={"uploadId": upload_id})
    assert resp.status == 204, resp
    assert c.list_multipart_uploads() == []
    assert store.list_keys() == [], "an aborted upload left an object"


def check_tls(store):
    assert store.endpoint.startswith("https://")
    no_ca = S3Client(store.endpoint, store.bucket, KEY, SECRET)   # the system's roots only
    try:
        no_ca.list_objects()
        raise AssertionError("the test CA's certificate passed without the CA")
    except ssl.SSLCertVerificationError:
        pass
    if os.geteuid() == 0:
        for path in store.tls_files:
            run(["test", "-r", path], as_postgres=True)
    proc = run(["openssl", "x509", "-in", store.tls_files.cert, "-noout", "-text"])
    for want in ("CA:FALSE", "IP Address:127.0.0.1", "DNS:localhost", "TLS Web Server Authentication"):
        assert want in proc.stdout, f"{want} not in the leaf certificate"
    run(["openssl", "verify", "-CAfile", store.ca_file, store.tls_files.cert])


def test_seaweedfs_http():
    exercise(SeaweedFS, tls=False)


def test_seaweedfs_tls():
    exercise(SeaweedFS, tls=True)


def test_rclone_http():
    exercise(Rclone, tls=False)


def test_rclone_tls():
    exercise(Rclone, tls=True)


def test_side_by_side_and_restart():
    """Two SeaweedFS and an rclone at once on ports of their own; a store
    stopped and started again keeps its objects."""
    with TestDir(prefix="pgbb-s3-") as td:
        with SeaweedFS(td.subdir("w1"), BUCKET, KEY, SECRET) as w1, \
                SeaweedFS(td.subdir("w2"), BUCKET, KEY, SECRET, tls=True) as w2, \
                Rclone(td.subdir("r"), BUCKET, KEY, SECRET) as r:
            stores = (w1, w2, r)
            all_ports = [p for s in stores for p in s.ports]
            assert len(set(all_ports)) == len(all_ports), all_ports
            for s in stores:
                s.client().put_object("who", s.kind.encode() + str(s.port).encode())
            for s in stores:
                assert s.client().get_object("who") == s.kind.encode() + str(s.port).encode()
            r.stop()
            assert not port_is_open(r.port)
            r.start()
            assert r.client().get_object("who") == b"rclone" + str(r.port).encode()
        assert not any(port_is_open(p) for p in all_ports)


def test_tls_files_once_and_missing_binary():
    with TestDir(prefix="pgbb-s3-") as td:
        first = tls_files(os.path.join(td.path, "tls"))
        mtimes = [os.stat(p).st_mtime_ns for p in first]
        again = tls_files(os.path.join(td.path, "tls"))
        assert again == first and [os.stat(p).st_mtime_ns for p in again] == mtimes
    saved = os.environ.get("PGBB_OBJECT_STORES")
    os.environ["PGBB_OBJECT_STORES"] = "/nonexistent"
    try:
        store_binary("weed")
        raise AssertionError("no SkipTest without the binary")
    except SkipTest as exc:
        assert "setup.sh" in str(exc), exc
    finally:
        if saved is None:
            del os.environ["PGBB_OBJECT_STORES"]
        else:
            os.environ["PGBB_OBJECT_STORES"] = saved
