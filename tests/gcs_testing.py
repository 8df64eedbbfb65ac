"""A local Google Cloud Storage: gcp-storage-emulator on the loopback interface, in memory, and the settings that
point gcsfs (etils.epath's gs:// backend), google-cloud-storage (tensorboardX) and tensorstore (orbax's array
data) at it. Set before any of them first touches gs:// (gcsfs and fsspec read some at import)."""
import json
import os
import socket
import socketserver
from http import HTTPStatus


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _patch(server_module, objects):
  """The emulator lacks objects.moveTo (gcsfs's rename: 501, then ~30 s of retries per file) and the generation
  header of downloads, and prints a traceback whenever a client drops a connection early: add the first two,
  silence the third."""
  if getattr(server_module, "_medssl_patched", False):
    return

  def move(request, response, storage, *args, **kwargs):
    bucket, src, dst = (request.params[k] for k in ("bucket_name", "object_id", "dest_object_id"))
    try:
      out = objects._copy(request.base_url, storage, bucket, src, bucket, dst)  # pylint: disable=protected-access
    except Exception:  # pylint: disable=broad-except
      response.status = HTTPStatus.NOT_FOUND
      return
    objects._delete(storage, bucket, src)  # pylint: disable=protected-access
    response.json(out)

  original_download = objects.download

  def download(request, response, storage, *args, **kwargs):
    # Real GCS names the object's generation in a header; tensorstore's gcs driver (orbax's OCDBT manifests)
    # needs it for its conditional writes.
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except Exception:  # pylint: disable=broad-except
      pass  # Missing object: the emulator's own handler answers 404.
    return original_download(request, response, storage, *args, **kwargs)

  route = (r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$",
           {server_module.POST: move})
  handlers = tuple((regex, {m: (download if f is original_download else f) for m, f in methods.items()})
                   for regex, methods in server_module.HANDLERS)
  server_module.HANDLERS = (route,) + handlers
  objects.download = download  # `get` with alt=media calls it by name.
  original = socketserver.BaseServer.handle_error

  def handle_error(self, request, client_address):
    import sys
    if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
      original(self, request, client_address)

  server_module.server.HTTPServer.handle_error = handle_error
  server_module._medssl_patched = True


def start(bucket: str = "bucket") -> tuple[object, str]:
  """(server, its URL): the emulator serving `bucket`, in a thread of this process (server.stop() ends it)."""
  import logging
  from gcp_storage_emulator import server as server_module
  from gcp_storage_emulator.handlers import objects
  _patch(server_module, objects)
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # Existence probes log "not found".
  port = _free_port()
  server = server_module.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  server.start()
  return server, f"http://127.0.0.1:{port}"


def settings(url: str) -> dict:
  gcs = {"token": "anon", "project": "test-project", "use_listings_cache": False}  # No stale directory listings.
  return {
      "STORAGE_EMULATOR_HOST": url,           # gcsfs, google-cloud-storage.
      "TENSORSTORE_GCS_HTTP_URL": url,        # tensorstore's gcs driver.
      "GCE_METADATA_ROOT": "127.0.0.1:1",     # No credential probe of a GCE metadata server.
      "NO_GCE_CHECK": "true",
      "GOOGLE_CLOUD_PROJECT": "test-project",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs would otherwise probe the bucket type over gRPC (60 s).
      "FSSPEC_GCS": json.dumps(gcs),
  }


def apply(env: dict):
  """`settings(url)` for this process (and fsspec's config, in case fsspec is imported already)."""
  os.environ.update(env)
  try:
    import fsspec.config
    fsspec.config.conf.setdefault("gcs", {}).update(json.loads(env["FSSPEC_GCS"]))
  except ImportError:
    pass
