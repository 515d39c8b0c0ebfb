"""Reading the ``embedding`` column of one Parquet file straight into a float16 matrix.

The embedding files are written PLAIN, uncompressed, without a dictionary (``ResultsTable
.write_file``): a data page is then just ``[4-byte length][2 * dims bytes]`` per window, so
the vectors are one strided copy out of the column chunk's bytes. pyarrow decodes those 2 KB
binary values one at a time into a binary array (about 1 million windows a second on this
machine, most of ``pam apply-head``'s time); this reads the page headers (Thrift compact
protocol) itself and copies each page's vectors with one numpy assignment.

``map_vectors`` goes one step further for a caller that only needs a function of the vectors
(a head's scores): it hands each page's vectors to the function where they lie in the memory
map, so not even that copy is made (a page's values may start at an odd address: the function
gets them there too; pam's heads read such rows through their pointer).

Anything else (a compressed or dictionary-encoded column, as files written before the
embeddings went uncompressed are; nulls; values of different lengths) returns ``None`` and
the caller reads the file with pyarrow instead: the fast path is an optimisation, never the
only reader.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import pam.store.schemas as schemas

_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_PLAIN = 0


class _Unsupported(Exception):
    """The column chunk is not plain fixed-length float16 vectors: read it with pyarrow."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Unsupported("varint too long")


def _zigzag(buf: memoryview, pos: int) -> tuple[int, int]:
    v, pos = _varint(buf, pos)
    return (v >> 1) ^ -(v & 1), pos


def _skip(buf: memoryview, pos: int, ctype: int) -> int:
    """Past one value of compact type ``ctype``."""
    if ctype in (1, 2):  # bool, in the field header
        return pos
    if ctype == 3:
        return pos + 1
    if ctype in (4, 5, 6):
        return _varint(buf, pos)[1]
    if ctype == 7:
        return pos + 8
    if ctype == 8:
        n, pos = _varint(buf, pos)
        return pos + n
    if ctype in (9, 10):
        head = buf[pos]
        pos += 1
        size, etype = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        for _ in range(size):
            pos = _skip_element(buf, pos, etype)
        return pos
    if ctype == 11:
        size, pos = _varint(buf, pos)
        if size:
            kv = buf[pos]
            pos += 1
            for _ in range(size):
                pos = _skip_element(buf, pos, kv >> 4)
                pos = _skip_element(buf, pos, kv & 0x0F)
        return pos
    if ctype == 12:
        return _struct(buf, pos, {})[1]
    raise _Unsupported(f"thrift type {ctype}")


def _skip_element(buf: memoryview, pos: int, etype: int) -> int:
    return pos + 1 if etype in (1, 2) else _skip(buf, pos, etype)  # list booleans take a byte


def _struct(buf: memoryview, pos: int, wanted: dict[int, dict | None]) -> tuple[dict, int]:
    """One Thrift compact struct from ``pos``: its integer fields and the nested structs named
    in ``wanted`` (field id: the nested struct's own ``wanted``); other fields skipped."""
    out: dict = {}
    last = 0
    while True:
        head = buf[pos]
        pos += 1
        if head == 0:
            return out, pos
        delta, ctype = head >> 4, head & 0x0F
        if delta:
            fid = last + delta
        else:
            fid, pos = _zigzag(buf, pos)
        last = fid
        if ctype in (4, 5, 6) and fid in wanted:
            out[fid], pos = _zigzag(buf, pos)
        elif ctype in (1, 2) and fid in wanted:
            out[fid] = ctype == 1
        elif ctype == 12 and fid in wanted:
            out[fid], pos = _struct(buf, pos, wanted[fid] or {})
        else:
            pos = _skip(buf, pos, ctype)


# PageHeader: 1 type, 2 uncompressed size, 3 compressed size, 5 DataPageHeader (1 num_values,
# 2 encoding), 7 DictionaryPageHeader, 8 DataPageHeaderV2 (1 num_values, 2 num_nulls,
# 4 encoding, 5 definition levels bytes, 6 repetition levels bytes, 7 is_compressed)
_PAGE_HEADER = {1: None, 2: None, 3: None, 5: {1: None, 2: None}, 7: {},
                8: {1: None, 2: None, 4: None, 5: None, 6: None, 7: None}}


def _records(region: np.ndarray, count: int, width: int, check_lengths: bool = True) -> np.ndarray:
    """``count`` PLAIN byte-array values of ``width`` bytes each in ``region``, as a uint8
    matrix [count, 4 + width] (each row: the value's 4-byte length, then its bytes); with
    ``check_lengths`` False the caller checks the lengths itself (``_check_lengths``)."""
    stride = 4 + width
    if len(region) != count * stride:
        raise _Unsupported("page holds nulls or values of other lengths")
    records = region.reshape(count, stride)
    if check_lengths:
        _check_lengths(records, width)
    return records


def _check_lengths(records: np.ndarray, width: int) -> None:
    if not (records[:, :4].view("<i4")[:, 0] == width).all():
        raise _Unsupported("values of different lengths")


def _chunk_pages(raw: np.ndarray, rows: int, width: int, max_def: int, check_lengths: bool = True):
    """(first row, records [count, 4 + width]) of each data page of one column chunk's bytes
    ``raw`` (uint8) of ``rows`` values; _Unsupported where it is not plain fixed-length values."""
    buf = memoryview(raw)
    pos = done = 0
    while done < rows:
        header, pos = _struct(buf, pos, _PAGE_HEADER)
        kind, size = header.get(1), header.get(3)
        if size is None or header.get(2) != size:
            raise _Unsupported("compressed page")
        body = raw[pos:pos + size]
        pos += size
        if kind == _DICTIONARY_PAGE:
            raise _Unsupported("dictionary page")
        if kind == _DATA_PAGE:
            page = header.get(5) or {}
            count, encoding = page.get(1), page.get(2)
            if max_def:  # v1: RLE definition levels with a 4-byte length before the values
                body = body[4 + int(body[:4].view("<i4")[0]):]
        elif kind == _DATA_PAGE_V2:
            page = header.get(8) or {}
            count, encoding = page.get(1), page.get(4)
            if page.get(2):
                raise _Unsupported("nulls")
            body = body[(page.get(5) or 0) + (page.get(6) or 0):]
        else:
            continue  # index pages carry no values
        if encoding != _PLAIN or count is None or done + count > rows:
            raise _Unsupported("not PLAIN")
        yield done, _records(body, count, width, check_lengths)
        done += count


def _checked_pages(raw: np.ndarray, rows: int, width: int, max_def: int, check_lengths: bool = True):
    """``_chunk_pages``, with malformed bytes (an index or value out of range) as _Unsupported."""
    try:
        yield from _chunk_pages(raw, rows, width, max_def, check_lengths)
    except (IndexError, ValueError) as e:
        raise _Unsupported(str(e)) from e


def column_chunk_vectors(raw: np.ndarray, rows: int, width: int, out: np.ndarray, max_def: int) -> None:
    """Decode one column chunk's bytes ``raw`` (uint8) of ``rows`` values into ``out``."""
    flat = out.view(np.uint8).reshape(rows, width)
    for first, records in _chunk_pages(raw, rows, width, max_def):
        flat[first:first + len(records)] = records[:, 4:]


def _plain_chunks(source, parquet: pq.ParquetFile, column: str):
    """(rows of the file, value width in bytes, [(rows, column chunk metadata)] per row group,
    max definition level) of a column that may be plain fixed-length float16 vectors; None
    where the file's metadata already says it is not."""
    meta = parquet.metadata
    index = parquet.schema_arrow.get_field_index(column)
    if index < 0 or meta.num_rows == 0:
        return None
    leaf = parquet.schema.column(index)
    if leaf.physical_type != "BYTE_ARRAY" or leaf.max_repetition_level:
        return None
    chunks = [(meta.row_group(g).num_rows, meta.row_group(g).column(index)) for g in range(meta.num_row_groups)]
    if any(c.compression != "UNCOMPRESSED" or c.has_dictionary_page for _, c in chunks):
        return None
    width = _value_width(source, chunks[0][1], leaf.max_definition_level)
    if width is None or width % 2:
        return None
    return meta.num_rows, width, chunks, leaf.max_definition_level


def map_vectors(source, parquet: pq.ParquetFile, fn, column: str = "embedding") -> np.ndarray | None:
    """``fn`` applied to the vectors of ``column`` page by page, its float32 results [rows, k]
    in row order; ``None`` where the file is not written the plain way (the caller then reads
    the vectors with pyarrow and applies ``fn`` to them itself).

    ``fn`` gets a float16 matrix [count, dims] with unit stride along dims but not between rows,
    a view straight into ``source``'s bytes (a memory map: no copy at all), not aligned where
    the page's values start at an odd address. It is valid only during the call, and ``fn``
    must not keep it. The values' length prefixes are checked after ``fn`` has read the page
    (while it is in the cache); a page that fails the check makes this return ``None``, its
    results dropped."""
    plain = _plain_chunks(source, parquet, column)
    if plain is None:
        return None
    total, width, chunks, max_def = plain
    out = None
    done = 0
    try:
        for rows, chunk in chunks:
            raw = np.frombuffer(_read_at(source, chunk.data_page_offset, chunk.total_compressed_size), np.uint8)
            for first, records in _checked_pages(raw, rows, width, max_def, check_lengths=False):
                count = len(records)
                result = np.asarray(fn(records[:, 4:].view(schemas.EMBEDDING_DTYPE)), dtype=np.float32)
                _check_lengths(records, width)
                if out is None:
                    out = np.empty((total,) + result.shape[1:], np.float32)
                out[done + first:done + first + count] = result
            done += rows
    except _Unsupported:  # only the file's layout: what fn raises is the caller's
        return None
    return out if out is not None and done == total else None


def read_vectors(source, parquet: pq.ParquetFile, column: str = "embedding") -> np.ndarray | None:
    """The vectors of ``column`` in a whole file as a float16 matrix [rows, dims], read from the
    open file ``source`` (``read_at``/``seek``+``read``) whose footer is ``parquet``; ``None``
    where the file is not written the plain way (the caller then reads it with pyarrow)."""
    plain = _plain_chunks(source, parquet, column)
    if plain is None:
        return None
    total, width, chunks, max_def = plain
    # arrow's memory pool, not numpy's malloc: it keeps freed blocks, so reading file after file
    # does not fault in fresh pages for every one
    out = np.frombuffer(pa.allocate_buffer(total * width), dtype=schemas.EMBEDDING_DTYPE)
    out = out.reshape(total, width // 2)
    done = 0
    try:
        for rows, chunk in chunks:
            raw = np.frombuffer(_read_at(source, chunk.data_page_offset, chunk.total_compressed_size), np.uint8)
            column_chunk_vectors(raw, rows, width, out[done:done + rows], max_def)
            done += rows
    except (_Unsupported, IndexError, ValueError):
        return None
    return out


def _value_width(source, chunk, max_def: int) -> int | None:
    """The byte length of the first value of a plain column chunk (from its first page)."""
    head = np.frombuffer(_read_at(source, chunk.data_page_offset, min(chunk.total_compressed_size, 1 << 16)),
                         np.uint8)
    try:
        header, pos = _struct(memoryview(head), 0, _PAGE_HEADER)
        body = pos
        if header.get(1) == _DATA_PAGE_V2:
            page = header.get(8) or {}
            body += (page.get(5) or 0) + (page.get(6) or 0)
        elif header.get(1) != _DATA_PAGE:
            return None
        elif max_def:
            body += 4 + int(head[body:body + 4].view("<i4")[0])
        return int(head[body:body + 4].view("<i4")[0])
    except (_Unsupported, IndexError, ValueError):
        return None


def _read_at(source, offset: int, nbytes: int):
    """``nbytes`` from ``offset``: an arrow buffer (no copy from a memory map) or bytes."""
    source.seek(offset)
    return source.read_buffer(nbytes) if hasattr(source, "read_buffer") else source.read(nbytes)
