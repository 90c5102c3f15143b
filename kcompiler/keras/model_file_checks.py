"""What a model or weights file must satisfy before anything in it is parsed or followed.

A model file is input from anyone, so loading checks it first and raises ModelFileError,
naming the file, for:

* a ``.keras`` member over its cap: ``config.json`` over MAX_CONFIG_BYTES (64 MiB) is refused
  from its size in the archive's directory, before it is decompressed; every member is read
  with at most the size the directory declares, so a member that inflates to more than it
  declares (a zip bomb behind a small declared size) fails its CRC check after that many
  bytes. ``metadata.json`` is never read.
* in an HDF5 file (a ``.h5`` model, the weights inside a ``.keras``, a weights file): an
  external link (to another file), a soft link that leads nowhere, a link of a user-defined
  type, a dataset or attribute whose type holds object or region references, a dataset stored
  in external raw files or virtual (mapped from other files), a dataset compressed with a
  filter HDF5 would load from a plugin (code from outside the file), or an attribute whose
  stored size is over MAX_ATTRIBUTE_BYTES (64 MiB). The whole file is walked once, without
  following soft links, before any attribute or dataset is read.
* JSON text (``config.json``, the ``model_config``/``training_config`` attributes) over
  MAX_CONFIG_BYTES, not UTF-8 JSON, or nested too deeply for the parser.

Not covered: a variable-length string attribute stores 16-byte references into the file's
heap, so its stored size does not bound its text; HDF5 allocates the length such a reference
declares before comparing it with the heap, so a crafted file can make one attribute read
allocate up to 4 GiB (it then fails with ModelFileError). Honest files hold such text in the
file itself, so reading it takes no more memory than the file's size.
"""
import json
from contextlib import contextmanager

from ..errors import KCompilerError, ModelFileError

MAX_CONFIG_BYTES = 64 * 2**20
MAX_ATTRIBUTE_BYTES = 64 * 2**20


# What reading a damaged or crafted file raises besides kcompiler's own errors.
DATA_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError, OverflowError,
               RecursionError, MemoryError)


@contextmanager
def file_problems(filepath, what):
    """Re-raise what a damaged or crafted file makes the code inside raise as ModelFileError naming
    the file and saying ``what`` failed (kcompiler's own errors already say what is wrong, and go through)."""
    try:
        yield
    except KCompilerError:
        raise
    except DATA_ERRORS as e:
        raise ModelFileError(f"{filepath}: {what}: {type(e).__name__}: {e}") from e


def read_archive_member(archive, name, filepath, limit=None):
    """The bytes of one member of an open zip archive: refused when its declared size is over
    ``limit``, and never more than its declared size (the decompressor is asked for no more)."""
    info = archive.getinfo(name)
    if limit is not None and info.file_size > limit:
        raise ModelFileError(f"{filepath}: {name} is {info.file_size} bytes, over the {limit}-byte limit for "
                             "it; refused without reading it")
    with archive.open(info) as member:
        return member.read(info.file_size)


def parse_json(text, filepath, what):
    """JSON text from a file, as Python objects; any problem (type, size, encoding, syntax, depth) is a
    ModelFileError."""
    if not isinstance(text, (str, bytes)):
        raise ModelFileError(f"{filepath}: {what} is not JSON text (it holds a {type(text).__name__})")
    if len(text) > MAX_CONFIG_BYTES:
        raise ModelFileError(f"{filepath}: {what} is {len(text)} bytes, over the {MAX_CONFIG_BYTES}-byte limit")
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text)
    except ValueError as e:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelFileError(f"{filepath}: {what} is not valid JSON: {e}") from None
    except RecursionError:
        raise ModelFileError(f"{filepath}: {what} is nested too deeply to be a model config") from None
    except MemoryError:
        raise ModelFileError(f"{filepath}: {what} is too large to parse") from None


def check_hdf5_file(f, filepath):
    """Refuse an open HDF5 file (h5py.File) that reaches outside itself or holds an attribute over
    the cap; reads no attribute value and no dataset."""
    import h5py
    links = []
    f.visititems_links(lambda name, link: links.append((name, link)))
    for name, link in links:   # first: resolving a soft link below must not open another file
        if isinstance(link, h5py.ExternalLink):
            raise ModelFileError(f"{filepath}: refused: the HDF5 link /{name} points to another file "
                                 f"({link.filename}:{link.path})")
        if not isinstance(link, (h5py.HardLink, h5py.SoftLink)):
            raise ModelFileError(f"{filepath}: refused: the HDF5 link /{name} is of a user-defined type")
    for name, link in links:
        if isinstance(link, h5py.SoftLink) and f.get(name) is None:
            raise ModelFileError(f"{filepath}: refused: the HDF5 soft link /{name} leads nowhere ({link.path})")
    seen = set()
    for name, obj in [("", f)] + [(name, f[name]) for name, link in links if isinstance(link, h5py.HardLink)]:
        if obj.id not in seen:
            seen.add(obj.id)
            _check_object(h5py, obj, f"/{name}", filepath)


# Filters HDF5 and h5py have built in; any other would be loaded from a plugin library.
_BUILT_IN_FILTERS = {1, 2, 3, 4, 5, 6, 32000}   # deflate, shuffle, fletcher32, szip, nbit, scaleoffset, lzf


def _check_object(h5py, obj, where, filepath):
    if isinstance(obj, h5py.Dataset):
        if obj.id.get_type().detect_class(h5py.h5t.REFERENCE):
            raise ModelFileError(f"{filepath}: refused: the dataset {where} holds HDF5 references")
        plist = obj.id.get_create_plist()
        if plist.get_external_count() or obj.is_virtual:
            raise ModelFileError(f"{filepath}: refused: the dataset {where} keeps its data in other files")
        filters = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
        if filters - _BUILT_IN_FILTERS:
            raise ModelFileError(f"{filepath}: refused: the dataset {where} needs HDF5 filter plugin(s) "
                                 f"{sorted(filters - _BUILT_IN_FILTERS)}")
    for index in range(h5py.h5a.get_num_attrs(obj.id)):
        attribute = h5py.h5a.open(obj.id, index=index)
        name = attribute.get_name().decode("utf-8", errors="replace")
        if attribute.get_type().detect_class(h5py.h5t.REFERENCE):
            raise ModelFileError(f"{filepath}: refused: the attribute {name!r} of {where} holds HDF5 references")
        # The stored size, from the shape and the element type (H5Aget_storage_size fails on empty ones).
        size = attribute.get_space().get_simple_extent_npoints() * attribute.get_type().get_size()
        if size > MAX_ATTRIBUTE_BYTES:
            raise ModelFileError(f"{filepath}: the attribute {name!r} of {where} is {size} bytes, over the "
                                 f"{MAX_ATTRIBUTE_BYTES}-byte limit; refused without reading it")
