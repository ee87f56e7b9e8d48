"""OHIF's prebuilt viewer (npm ``@ohif/app``, fetched by ``.ci/ohif``) served for tests against a
DICOMweb server, from one origin so the browser needs no CORS:

    dist = ohif_dist()                                   # fails with "run bash .ci/setup" when absent
    with OhifServer(dist, orthanc.url) as viewer:        # dist at /, /dicom-web/* → Orthanc
        browser = headless_chromium()                    # Debian's chromium + chromedriver, via selenium
        browser.get(viewer.viewer_url(study_uid))

Why not Orthanc's ServeFolders: the prebuilt dist is built for the site root (its webpack
public path is "/", its index.html loads "/app.bundle…js") and OHIF routes on the client
(``/viewer?StudyInstanceUIDs=…`` has no file behind it), so it needs a server that answers
unknown paths with index.html. This one is the usual deployment of OHIF beside Orthanc (a web
server for the viewer with DICOMweb proxied behind the same origin, as in OHIF's nginx recipes)
in stdlib form: the viewer's files as they are, ``/app-config.js`` answered from
:func:`app_config` (the cached dist is never edited), and ``/dicom-web/…`` forwarded to the
upstream server, with its credentials when it has some.
"""
from __future__ import annotations

import base64
import http.client
import json
import mimetypes
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

REPO = Path(__file__).resolve().parents[2]
PROXIED = "/dicom-web/"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# The issue's flags: no sandbox (CI runs as root), no GPU (software WebGL), nothing fetched
# from the network behind the test's back.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking")
# Response headers passed back from the upstream DICOMweb server as they are (the body is
# re-sent whole, so its length and transfer coding are the proxy's own).
_UPSTREAM_HEADERS = ("Content-Type", "Content-Disposition", "ETag", "Last-Modified", "Cache-Control")


def ohif_dist() -> Path:
    """The dist/ folder that ``.ci/ohif`` fetched (same location rules: ``NEUROREAD_OHIF_DIR`` or
    ``~/.cache/neuroread/ohif/<version>``); fails the test, naming the fix, when it is missing."""
    res = subprocess.run(["bash", str(REPO / ".ci" / "ohif"), "--check"], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        pytest.fail(f"OHIF's viewer is missing: {res.stderr.strip() or 'bash .ci/ohif --check failed'}")
    return Path(res.stdout.strip())


def headless_chromium(width: int = 1600, height: int = 1000) -> webdriver.Chrome:
    """Debian's Chromium under its own chromedriver (package chromium-driver), headless, with
    the browser console kept (``get_log("browser")``). The driver path is given explicitly, so
    selenium never runs Selenium Manager (which would try to download a driver). Fails the
    test, naming the fix, when either is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing (Debian packages chromium, chromium-driver); "
                    "run `bash .ci/setup`")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def app_config(dicomweb_root: str) -> str:
    """OHIF's ``app-config.js`` (``window.config``) with one DICOMweb data source at
    ``dicomweb_root`` (QIDO-RS, WADO-RS and WADO-URI all there, as Orthanc's DICOMweb plugin
    serves them), the settings OHIF's own Orthanc samples use, no investigational-use dialog
    (our objects carry their own "demo weights" notice), no onboarding tour and no auto-cine."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc DICOMweb", "name": "orthanc",
            "wadoUriRoot": dicomweb_root, "qidoRoot": dicomweb_root, "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": False, "supportsReject": False,
            "imageRendering": "wadors", "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True, "supportsFuzzyMatching": False, "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        },
    }
    config = {
        "routerBasename": "/", "showStudyList": True, "extensions": [], "modes": [],
        # No onboarding tour (a modal over the viewport), and no cine playing by itself through
        # a series of Secondary Captures (OHIF plays OT and US series on opening by default).
        "customizationService": {"ohif.tours": {"$set": []}, "autoCineModalities": {"$set": []}},
        "defaultDataSourceName": "orthanc", "dataSources": [source],
        "showWarningMessageForCrossOrigin": False, "showCPUFallbackMessage": False,
        "showLoadingIndicator": True, "maxNumberOfWebWorkers": 2,
        "investigationalUseDialog": {"option": "never"},
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class OhifServer:
    """OHIF's ``dist`` on ``http://127.0.0.1:<free port>/`` with DICOMweb proxied to ``upstream``
    (e.g. an Orthanc's base URL; ``auth``: its basic-auth user and password). Starts at once;
    :meth:`stop` (or leaving the ``with`` block) shuts it down."""

    def __init__(self, dist: Path, upstream: str, auth: tuple[str, str] | None = None) -> None:
        self.dist = Path(dist).resolve()
        if not (self.dist / "index.html").is_file():
            raise ValueError(f"{self.dist} is not OHIF's dist folder (no index.html)")
        target = urllib.parse.urlsplit(upstream)
        if target.scheme != "http" or not target.hostname:
            raise ValueError(f"upstream {upstream!r}: expected http://host:port")
        self.upstream = (target.hostname, target.port or 80)
        self.authorization = "Basic " + base64.b64encode(":".join(auth).encode()).decode() if auth else None
        self.requests: list[tuple[str, int]] = []  # (path, status) of every request answered
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.config_js = app_config(self.url + PROXIED.rstrip("/")).encode()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def viewer_url(self, study_uid: str) -> str:
        """OHIF's basic viewer on one study."""
        return f"{self.url}/viewer?StudyInstanceUIDs={urllib.parse.quote(study_uid)}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)

    def __enter__(self) -> "OhifServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = urllib.parse.urlsplit(self.path).path
                if path.startswith(PROXIED):
                    status = self._proxy()
                elif path == "/app-config.js":
                    status = self._send(200, server.config_js, "application/javascript")
                else:
                    status = self._static(urllib.parse.unquote(path))
                server.requests.append((self.path, status))

            def _static(self, path: str) -> int:
                file = (server.dist / path.lstrip("/")).resolve()
                if not file.is_relative_to(server.dist):
                    return self._send(404, b"outside the viewer", "text/plain")
                if not file.is_file():
                    if Path(path).suffix:  # a missing asset, not a client-side route
                        return self._send(404, b"not found", "text/plain")
                    file = server.dist / "index.html"
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                if file.suffix == ".wasm":
                    kind = "application/wasm"
                return self._send(200, file.read_bytes(), kind)

            def _proxy(self) -> int:
                # The browser's Host goes on: an Orthanc whose DicomWeb.Host is unset writes its
                # BulkDataURIs on this origin then.
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "host")}
                if server.authorization:
                    headers["Authorization"] = server.authorization
                conn = http.client.HTTPConnection(*server.upstream, timeout=60)
                try:
                    conn.request("GET", self.path, headers=headers)
                    answer = conn.getresponse()
                    body = answer.read()
                    extra = {k: v for k in _UPSTREAM_HEADERS if (v := answer.getheader(k))}
                    return self._send(answer.status, body, extra.pop("Content-Type", "application/octet-stream"), extra)
                except OSError as exc:
                    return self._send(502, f"upstream {server.upstream}: {exc}".encode(), "text/plain")
                finally:
                    conn.close()

            def _send(self, status: int, body: bytes, kind: str, extra: dict[str, str] | None = None) -> int:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
                return status

            def log_message(self, format: str, *args: object) -> None:  # quiet: requests are recorded instead
                pass

        return Handler


if __name__ == "__main__":  # look at results yourself: python tests/support/ohif.py http://127.0.0.1:8042 [USER:PASSWORD]
    import sys
    import time

    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python tests/support/ohif.py ORTHANC_URL [USER:PASSWORD]   (OHIF against that Orthanc's DICOMweb)")
    credentials = tuple(sys.argv[2].split(":", 1)) if len(sys.argv) == 3 else None
    with OhifServer(ohif_dist(), sys.argv[1], credentials) as viewer:
        print(f"OHIF on {viewer.url}/ (study list), DICOMweb of {sys.argv[1]} behind {viewer.url}{PROXIED}; Ctrl-C stops",
              flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
