"""The smallest proxy-wasm HTTP filter Envoy loads (every callback answers a constant), written
out byte by byte: the benchmark's floor for what any Wasm filter costs Envoy in memory, apart
from what its own code does."""

I32 = 0x7F


def _leb128(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _vector(items):
    return _leb128(len(items)) + b"".join(items)


def _section(section_id, payload):
    return bytes([section_id]) + _leb128(len(payload)) + payload


def _name(text):
    return _leb128(len(text)) + text.encode()


def _function_type(params, results):
    return b"\x60" + _vector([bytes([p]) for p in params]) + _vector([bytes([r]) for r in results])


def module_bytes():
    """A Wasm module (binary format 1) exporting a memory and the proxy-wasm 0.2.1 callbacks an
    HTTP filter needs: the ABI marker, an allocator (never called: the module reads nothing
    from the host), context creation, request headers (Continue), done and delete."""
    types = [
        _function_type([], []),
        _function_type([I32], [I32]),
        _function_type([I32, I32], []),
        _function_type([I32, I32, I32], [I32]),
        _function_type([I32], []),
    ]
    i32_const = lambda value: b"\x41" + _leb128(value)  # values below 64: one LEB128 byte, no sign issue
    functions = [  # (export name, type index, body without locals and `end`)
        ("proxy_abi_version_0_2_1", 0, b""),
        ("proxy_on_memory_allocate", 1, b"\x41" + bytes([0x80, 0x08])),  # i32.const 1024
        ("proxy_on_context_create", 2, b""),
        ("proxy_on_request_headers", 3, i32_const(0)),  # Action::Continue
        ("proxy_on_done", 1, i32_const(1)),
        ("proxy_on_delete", 4, b""),
    ]
    bodies = [_leb128(len(code) + 2) + b"\x00" + code + b"\x0b" for _, _, code in functions]
    exports = [_name("memory") + b"\x02\x00"]
    exports += [_name(name) + b"\x00" + _leb128(index) for index, (name, _, _) in enumerate(functions)]
    return (
        b"\x00asm\x01\x00\x00\x00"
        + _section(1, _vector(types))
        + _section(3, _vector([_leb128(type_index) for _, type_index, _ in functions]))
        + _section(5, _vector([b"\x00" + _leb128(2)]))  # one memory, 2 pages, no maximum
        + _section(7, _vector(exports))
        + _section(10, _vector(bodies))
    )
