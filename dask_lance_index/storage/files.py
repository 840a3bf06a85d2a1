"""Files beside Lance's own: one way to reach a local disk or an object store.

Every file this library writes or removes outside Lance's calls (segment
directories, the build journal, partition artifacts, saved models) goes
through :class:`Store`, which reaches a local directory directly and an object
store through pyarrow configured from the same ``storage_options`` Lance takes.
The driver and every worker therefore reach the same store with the same
credentials, not whatever their environment holds.

:class:`StorageOptions` carries those options through a task graph with a
``repr`` that hides the credentials (a worker logs a failing task's arguments).
"""

from __future__ import annotations

import os
import shutil
import time

import pyarrow.fs as pafs

__all__ = ["Store", "StorageOptions", "filesystem", "hide_secrets", "is_local", "join", "options_apply"]

# Settings shown as they are in a repr; every other value (keys, secrets, tokens, and
# anything unknown) is shown as '***'.
_PLAIN_KEYS = frozenset({
    "aws_region", "region", "aws_endpoint", "aws_endpoint_url", "endpoint", "endpoint_url", "allow_http",
    "allow_invalid_certificates", "aws_virtual_hosted_style_request", "virtual_hosted_style_request",
    "timeout", "connect_timeout", "client_max_retries", "client_retry_timeout",
})


class StorageOptions(dict):
    """Lance's ``storage_options``, as a plain dict whose ``repr`` hides the credentials.

    A task graph carries the options as an argument of its tasks, and a worker
    logs ``repr`` of a failing task ("Compute Failed ... Task: ..."): wrapped
    in this class they show as ``{'aws_secret_access_key': '***', ...}``
    there. Lance and pyarrow take it as the dict it is.
    """

    def __repr__(self) -> str:
        shown = (f"{k!r}: {v!r}" if str(k).lower() in _PLAIN_KEYS else f"{k!r}: '***'" for k, v in self.items())
        return "{" + ", ".join(shown) + "}"

    __str__ = __repr__


def hide_secrets(storage_options: dict | None) -> StorageOptions | None:
    """``storage_options`` as a :class:`StorageOptions` (None stays None), for a task graph."""
    if storage_options is None or isinstance(storage_options, StorageOptions):
        return storage_options
    return StorageOptions(storage_options)


# Lance's (object_store's) names for S3 settings -> pyarrow.fs.S3FileSystem's.
_S3_KEYS = {
    "aws_access_key_id": "access_key",
    "access_key_id": "access_key",
    "aws_secret_access_key": "secret_key",
    "secret_access_key": "secret_key",
    "aws_session_token": "session_token",
    "session_token": "session_token",
    "token": "session_token",
    "aws_region": "region",
    "region": "region",
}
_S3_ENDPOINT_KEYS = ("aws_endpoint", "aws_endpoint_url", "endpoint", "endpoint_url")


def is_local(uri: str) -> bool:
    """True for a local path or ``file://`` URI."""
    uri = str(uri)
    return "://" not in uri or uri.startswith("file://")


def join(root: str, rel: str) -> str:
    """``root/rel`` for a path or URI."""
    return str(root).rstrip("/") + "/" + rel


def filesystem(uri: str, storage_options: dict | None = None):
    """``(pyarrow FileSystem, path)`` for ``uri``, configured from the same
    ``storage_options`` Lance takes (credentials, endpoint, ``allow_http``)."""
    uri = str(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), uri.removeprefix("file://")
    opts = {str(k).lower(): v for k, v in (storage_options or {}).items()}
    scheme, _, rest = uri.partition("://")
    if scheme in ("s3", "s3a") and opts:
        kwargs = {_S3_KEYS[k]: str(v) for k, v in opts.items() if k in _S3_KEYS}
        endpoint = next((str(opts[k]) for k in _S3_ENDPOINT_KEYS if k in opts), None)
        if endpoint:
            proto, _, host = endpoint.partition("://")
            kwargs["endpoint_override"] = host or proto
            kwargs["scheme"] = proto if host else ("http" if str(opts.get("allow_http", "")).lower() == "true" else "https")
        return pafs.S3FileSystem(**kwargs), rest
    return pafs.FileSystem.from_uri(uri)


def options_apply(uri: str, storage_options: dict | None = None) -> bool:
    """Whether :func:`filesystem` reaches ``uri`` as Lance does with ``storage_options``: a
    local path, an S3 URI, or no options (both then use the environment's credentials)."""
    uri = str(uri)
    return is_local(uri) or not storage_options or uri.partition("://")[0] in ("s3", "s3a")


class Store:
    """Small file operations under ``root``: a local directory or, through pyarrow, an
    object-store prefix reached with Lance's ``storage_options``.

    Paths given to the methods are relative to ``root`` (``""`` is the root itself).
    A local write goes to a temporary file that is then renamed, so a reader never
    sees half a file; an object store's put is atomic itself.
    """

    def __init__(self, root: str, storage_options: dict | None = None):
        self.root = str(root).rstrip("/")
        self.local = is_local(self.root)
        if self.local:
            self.root = self.root.removeprefix("file://")
            self.fs, self.base = pafs.LocalFileSystem(), self.root
        else:
            self.fs, base = filesystem(self.root, storage_options)
            self.base = base.rstrip("/")

    def __repr__(self) -> str:  # never the storage options: they may hold credentials
        return f"Store({self.root!r})"

    def path(self, rel: str = "") -> str:
        """The path of ``rel``: a local path, or the path within the object store."""
        if self.local:
            return os.path.join(self.root, rel) if rel else self.root
        return f"{self.base}/{rel}" if rel else self.base

    def write(self, rel: str, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        path = self.path(rel)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.{time.monotonic_ns()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            with self.fs.open_output_stream(path) as f:
                f.write(data)

    def read(self, rel: str) -> str | None:
        """The text of ``rel``, or None when there is no such file."""
        path = self.path(rel)
        try:
            if self.local:
                with open(path, encoding="utf-8") as f:
                    return f.read()
            with self.fs.open_input_stream(path) as f:
                return f.read().decode()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:  # pyarrow raises OSError for a missing object
            if not self.local and not self.exists(rel):
                return None
            raise

    def exists(self, rel: str = "") -> bool:
        path = self.path(rel)
        if self.local:
            return os.path.exists(path)
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly under ``rel`` (empty when it does not exist)."""
        path = self.path(rel)
        if self.local:
            return sorted(os.listdir(path)) if os.path.isdir(path) else []
        infos = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def remove(self, rel: str) -> None:
        """Remove one file, if it exists."""
        path = self.path(rel)
        if self.local:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        elif self.exists(rel):
            self.fs.delete_file(path)

    def remove_tree(self, rel: str = "") -> bool:
        """Remove a directory and everything under it; returns whether it existed."""
        path = self.path(rel)
        if self.local:
            if not os.path.isdir(path):
                return False
            shutil.rmtree(path, ignore_errors=True)
            return True
        if not self.exists(rel):
            return False
        self.fs.delete_dir(path)
        return True

    def remove_empty_dir(self, rel: str = "") -> None:
        """Remove a local directory if it is empty (an object store has no empty directories)."""
        if self.local:
            try:
                os.rmdir(self.path(rel))
            except OSError:
                pass
