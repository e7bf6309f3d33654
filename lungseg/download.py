"""Getting the data: Kaggle credentials and download, local archives, safe extraction.

Everything lands in a staging folder beside the target and is renamed into place only
after it has been extracted and verified, so an interrupted download or extraction never
leaves a folder that later looks complete, and an existing folder is never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from lungseg.data import find_pairs
from lungseg.errors import LungsegError
from lungseg.synthetic import write_synthetic_dataset

KAGGLE_DATASET = "kmader/finding-lungs-in-ct-data"
MAX_EXTRACTED_BYTES = 4 * 1024**3  # the whole Kaggle set is about 1 GB; refuse zip bombs

CREDENTIALS_HELP = (
    "Get a Kaggle API token at https://www.kaggle.com/settings (Account > API > Create New "
    "Token: it downloads kaggle.json). Then either save it as ~/.kaggle/kaggle.json "
    "(chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN). In Colab, run "
    "01_download with DATA_SOURCE='kaggle' and upload kaggle.json when asked."
)


# --------------------------------------------------------------------------- credentials
def find_kaggle_credentials(environ=None, home: Path | None = None) -> str | None:
    """Say where Kaggle credentials would come from, or None if there are none.

    Looks where the ``kaggle`` package looks: KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN,
    ``$KAGGLE_CONFIG_DIR/kaggle.json``, ``~/.kaggle/kaggle.json``, ``~/.config/kaggle/kaggle.json``,
    ``~/.kaggle/access_token``. A kaggle.json that is not valid raises :class:`LungsegError`.
    The key itself is never returned or printed.
    """
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else Path(home)
    if environ.get("KAGGLE_USERNAME") or environ.get("KAGGLE_KEY"):
        missing = [v for v in ("KAGGLE_USERNAME", "KAGGLE_KEY") if not environ.get(v)]
        if missing:
            raise LungsegError(f"{missing[0]} is not set (the other half is). " + CREDENTIALS_HELP)
        return "environment variables KAGGLE_USERNAME and KAGGLE_KEY"
    if environ.get("KAGGLE_API_TOKEN"):
        return "environment variable KAGGLE_API_TOKEN"
    folders = [Path(environ["KAGGLE_CONFIG_DIR"])] if environ.get("KAGGLE_CONFIG_DIR") else []
    folders += [home / ".kaggle", home / ".config" / "kaggle"]
    for folder in folders:
        config = folder / "kaggle.json"
        if config.is_file():
            _check_kaggle_json(config.read_bytes(), config)
            return str(config)
        if (folder / "access_token").is_file():
            return str(folder / "access_token")
    return None


def _check_kaggle_json(content: bytes, origin) -> dict:
    try:
        values = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        values = None
    if not isinstance(values, dict) or not values.get("username") or not values.get("key"):
        raise LungsegError(
            f"{origin} is not a valid kaggle.json (it needs \"username\" and \"key\"). " + CREDENTIALS_HELP
        )
    return values


def install_kaggle_json(content: bytes, home: Path | None = None) -> Path:
    """Save an uploaded kaggle.json as ~/.kaggle/kaggle.json, readable by the owner only (600).

    An existing different kaggle.json is not overwritten."""
    _check_kaggle_json(content, "the uploaded file")
    folder = (Path.home() if home is None else Path(home)) / ".kaggle"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = folder / "kaggle.json"
    if target.exists() and target.read_bytes() != content:
        raise LungsegError(f"{target} already exists with other credentials; delete it first to replace it.")
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
    os.chmod(target, 0o600)
    return target


def ask_for_kaggle_json_in_colab() -> None:  # pragma: no cover - needs a Colab browser session
    """In Colab, ask the user to upload kaggle.json and install it with mode 600."""
    from google.colab import files  # type: ignore[import-not-found]

    print("Upload your kaggle.json (from https://www.kaggle.com/settings > API > Create New Token).")
    uploaded = files.upload()
    if not uploaded:
        raise LungsegError("No file was uploaded. " + CREDENTIALS_HELP)
    print("Saved to", install_kaggle_json(next(iter(uploaded.values()))))


# --------------------------------------------------------------------------- extraction
def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "a '..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    return None


def safe_extract_zip(archive: str | Path, target: str | Path, *, max_bytes: int = MAX_EXTRACTED_BYTES) -> None:
    """Extract a zip into ``target``, refusing absolute paths, '..', links and zip bombs.

    Every entry is checked before anything is written; the error names the entry.
    """
    archive, target = Path(archive), Path(target)
    try:
        with zipfile.ZipFile(archive) as bundle:
            entries = bundle.infolist()
            for info in entries:
                problem = _entry_problem(info)
                if problem:
                    raise LungsegError(
                        f"{archive}: entry {info.filename!r} is {problem}; refusing to extract this "
                        "archive. Get the data from Kaggle directly."
                    )
            total = sum(info.file_size for info in entries)
            if total > max_bytes:
                raise LungsegError(
                    f"{archive}: would extract {total / 1e9:.1f} GB (limit {max_bytes / 1e9:.1f} GB); "
                    "refusing a possible zip bomb."
                )
            root = target.resolve()
            for info in entries:
                destination = (target / info.filename.replace("\\", "/")).resolve()
                if root not in destination.parents and destination != root:
                    raise LungsegError(f"{archive}: entry {info.filename!r} points outside the target folder.")
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
    except zipfile.BadZipFile as error:
        if tarfile.is_tarfile(archive):
            raise LungsegError(
                f"{archive}: a tar archive, not a zip. Extract it yourself (tar -xf {archive.name}) and use "
                "DATA_SOURCE='folder' with DATA_DIR set to the extracted folder.") from error
        raise LungsegError(
            f"{archive}: not a valid zip archive ({error}); it may be a partial download. "
            "Delete it and download it again."
        ) from error


def _find_one(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/*/name`` (archives often nest one folder down)."""
    hits = [folder / name] + sorted(folder.glob(f"*/{name}"))
    return next((hit for hit in hits if hit.exists()), None)


def _extract_inner(zip_path: Path, destination: Path) -> None:
    """Extract 2d_images.zip / 2d_masks.zip so that the slices sit directly in ``destination``."""
    scratch = destination.with_name(destination.name + ".scratch")
    safe_extract_zip(zip_path, scratch)
    tifs = sorted(scratch.rglob("*.tif"))
    if not tifs:
        raise LungsegError(f"{zip_path}: holds no .tif slices.")
    destination.mkdir(parents=True)
    for tif in tifs:
        if not tif.name.startswith("._"):  # macOS resource forks
            tif.replace(destination / tif.name)
    shutil.rmtree(scratch)


def arrange_kaggle_layout(raw: Path, final: Path) -> None:
    """Turn an extracted Kaggle download (folders or inner zips) into ``final``
    with ``2d_images/``, ``2d_masks/`` and ``lung_stats.csv``."""
    final.mkdir(parents=True)
    for part in ("2d_images", "2d_masks"):
        folder = _find_one(raw, part)
        if folder is not None and folder.is_dir() and any(folder.glob("*.tif")):
            shutil.copytree(folder, final / part)
            continue
        inner = _find_one(raw, f"{part}.zip")
        if inner is None:
            raise LungsegError(
                f"Neither {part}/ nor {part}.zip found in the archive (looked in {raw.name} and one "
                "folder down). Is this the 'Finding Lungs in CT Data' dataset?"
            )
        _extract_inner(inner, final / part)
    stats = _find_one(raw, "lung_stats.csv")
    if stats is not None:
        shutil.copy2(stats, final / "lung_stats.csv")


def install_archive(archive: str | Path, target: str | Path) -> Path:
    """Extract a local archive (the whole Kaggle zip, a folder holding 2d_images.zip and
    2d_masks.zip, or a zip in the Train/Test layout) into ``target``, atomically.

    ``target`` must not exist yet; it appears only once the data inside it is complete.
    """
    archive, target = Path(archive).expanduser(), Path(target).expanduser()
    if not archive.exists():
        raise LungsegError(f"ARCHIVE {archive} does not exist. Give the path of the downloaded zip.")
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):  # an empty folder may be filled
        raise LungsegError(f"{target} already exists and is not empty; refusing to overwrite it. Choose another "
                           "DATA_DIR (a new or empty folder).")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    raw = archive if archive.is_dir() else staging / "raw"  # a user's folder: copied, never moved
    try:
        if not archive.is_dir():
            safe_extract_zip(archive, raw)
        complete = staging / "final"
        if _find_one(raw, "2d_images") or _find_one(raw, "2d_images.zip"):
            arrange_kaggle_layout(raw, complete)
        else:
            find_pairs(raw)  # the Train/Test layout, or a clear error saying what was expected
            (shutil.copytree if raw == archive else shutil.move)(raw, complete)
        find_pairs(complete)
        complete.replace(target)  # rename(2) also replaces an empty folder
    except LungsegError as error:  # the staging folder is deleted below: name the archive instead
        message = str(error)
        for inner in (raw, staging / "final", staging):
            message = message.replace(str(inner), f"{archive} (inside)" if inner != archive else str(archive))
        raise LungsegError(message) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def download_with_kagglehub(target: str | Path, dataset: str = KAGGLE_DATASET) -> Path:
    """Download the dataset with ``kagglehub``, Kaggle's own client, and install it into ``target``.

    A public dataset needs no account: kagglehub's documentation says authentication is only needed
    for private resources or ones that require consent (it also reads KAGGLE_USERNAME/KAGGLE_KEY, a
    kaggle.json or Colab secrets when there are any). It downloads into its own cache
    (``~/.cache/kagglehub``); from there the data are copied into ``target`` as from an archive folder."""
    try:
        import kagglehub
    except ImportError:
        raise LungsegError("kagglehub is not installed: pip install kagglehub (or pip install -r requirements.txt).") from None
    print(f"Downloading {dataset} from kaggle.com with kagglehub (no account needed) ...", flush=True)
    try:
        folder = kagglehub.dataset_download(dataset)
    except Exception as error:  # no network, Kaggle down, a proxy: kagglehub raises many kinds
        reason = (str(error).splitlines() or [""])[0]
        reason = reason if len(reason) <= 100 else reason[:97] + "..."
        raise LungsegError(f"kagglehub could not download {dataset} ({type(error).__name__}: {reason}). "
                           "Check the network, or download it by hand and give DATA_DIR or ARCHIVE.") from None
    return install_archive(folder, target)


def download_from_kaggle(target: str | Path, dataset: str = KAGGLE_DATASET) -> Path:  # pragma: no cover
    """Download the dataset with the official ``kaggle`` package and install it into ``target``.

    Needs network access and credentials (see :func:`find_kaggle_credentials`)."""
    target = Path(target)
    where = find_kaggle_credentials()
    if where is None:
        raise LungsegError("No Kaggle credentials found. " + CREDENTIALS_HELP)
    print(f"Kaggle credentials from {where}; downloading {dataset} ...")
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit as error:
        raise LungsegError(f"Kaggle refused the credentials in {where}. " + CREDENTIALS_HELP) from error
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.download-", dir=target.parent) as folder:
        try:
            api.dataset_download_files(dataset, path=folder, unzip=False, quiet=False)
        except Exception as error:
            raise LungsegError(
                f"Downloading {dataset} failed ({type(error).__name__}: {error}). Check the network; "
                f"a 401/403 means the token in {where} is wrong or expired: " + CREDENTIALS_HELP
            ) from error
        archives = sorted(Path(folder).glob("*.zip"))
        if len(archives) != 1:
            raise LungsegError(f"Expected one zip from Kaggle in {folder}, found {len(archives)}.")
        return install_archive(archives[0], target)


# --------------------------------------------------------------------------- choosing a source
DATA_SOURCES = ("auto", "kagglehub", "kaggle", "folder", "archive", "synthetic")


def get_dataset(source: str, data_dir: str | Path, output_dir: str | Path, archive: str | Path | None = None,
                synthetic_count: int = 60, seed: int = 0, in_colab: bool = False, named: bool = False) -> dict:
    """Get the data from ``source`` and return a record of where it is and what it is.

    - ``folder``: use ``data_dir`` as it is (Kaggle or Train/Test layout).
    - ``archive``: extract ``archive`` into ``data_dir`` (skipped if ``data_dir`` already holds data).
    - ``kagglehub``: download with kagglehub, no account needed (skipped if ``data_dir`` already holds data).
    - ``kaggle``: download with the kaggle package and a token (skipped if ``data_dir`` already holds data).
    - ``synthetic``: write phantoms into ``output_dir/synthetic_data``.
    - ``auto``: ``data_dir`` if it exists and is not empty, else kagglehub, else the kaggle package if
      credentials exist, else synthetic phantoms (said loudly; every later notebook labels them).
      When the user ``named`` ``data_dir`` (DATA_DIR or $LUNGSEG_DATA_DIR), it must hold the data: a
      misspelt path stops here instead of quietly falling back to synthetic phantoms.
    """
    if source not in DATA_SOURCES:
        raise LungsegError(f"DATA_SOURCE={source!r} is unknown; use one of {', '.join(DATA_SOURCES)}.")
    data_dir = Path(data_dir).expanduser()
    already_there = data_dir.is_dir() and _holds_pairs(data_dir)
    if source == "auto":
        if data_dir.is_dir() and any(data_dir.iterdir()):  # a broken folder gets its error below
            source = "folder"
        elif named:
            state = "is empty" if data_dir.is_dir() else "does not exist"
            raise LungsegError(
                f"The data folder you named, {data_dir.resolve()}, {state}. Fix DATA_DIR / $LUNGSEG_DATA_DIR "
                "(a relative path is taken from the folder you ran the command in), or leave both empty to "
                "download from Kaggle, or set DATA_SOURCE='synthetic' for phantoms.")
        else:
            try:
                download_with_kagglehub(data_dir)
                source = "kagglehub"
            except LungsegError as error:
                print(f"No data in {data_dir}; {error}")
                if find_kaggle_credentials() is not None:
                    source = "kaggle"
                else:
                    print("No Kaggle credentials either: using SYNTHETIC phantoms, NOT real CT. Every notebook and "
                          "figure will say so. For the real slices, run 01 where kaggle.com can be reached, or give "
                          "DATA_DIR / ARCHIVE.")
                    source = "synthetic"
    if source == "synthetic":
        root = write_synthetic_dataset(Path(output_dir) / "synthetic_data", synthetic_count, seed)
        return {"source": "synthetic", "synthetic": True, "root": str(root.resolve())}
    if source in ("kagglehub", "kaggle", "archive") and already_there:
        print(f"{data_dir} already holds the data: nothing to download or extract.")
    elif source == "archive":
        if not archive:
            raise LungsegError("DATA_SOURCE='archive' needs ARCHIVE, the path of the downloaded zip.")
        install_archive(archive, data_dir)
    elif source == "kagglehub" and not _holds_pairs(data_dir):
        download_with_kagglehub(data_dir)
    elif source == "kaggle":
        if find_kaggle_credentials() is None and in_colab:
            ask_for_kaggle_json_in_colab()
        download_from_kaggle(data_dir)
    find_pairs(data_dir)  # a clear error if the folder is not usable
    return {"source": source, "synthetic": False, "root": str(data_dir.resolve())}


def _holds_pairs(folder: Path) -> bool:
    try:
        find_pairs(folder)
    except LungsegError:
        return False
    return True
