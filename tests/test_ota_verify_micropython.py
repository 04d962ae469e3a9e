"""The board's release check (firmware/washpay/ota/) under the real MicroPython, on both
interpreters (the 64-bit unix port and the 32-bit one, ESP32 object sizes): SHA-512 against
hashlib, Ed25519 against the RFC 8032 vectors and `cryptography`'s signatures, manifests made
and signed by the host's definition (host_tools/release/) accepted, and every mutation of
one refused with a reason a person can read (docs/release-format.md).

All cases run in one MicroPython process per interpreter; each is still its own test.
"""

import hashlib
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import FIRMWARE, ROOT, micropython_path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from host_tools import release as REL

# RFC 8032 section 7.1 (Ed25519): (name, secret key, public key, message, signature), all hex
RFC8032 = [
    ("TEST 1",
     "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
     "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
     "d25bf5f0595bbe24655141438e7a100b"),
    ("TEST 2",
     "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
     "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c"
     "387b2eaeb4302aeeb00d291612bb0c00"),
    ("TEST 3",
     "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
     "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc659"
     "4a7c15e9716ed28dc027beceea1ec40a"),
    ("TEST 1024",
     "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
     "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
     "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f54e9f77b1"
     "e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
     "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177e93a"
     "7363c344fe6b199ee5d02e82d522c4feba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
     "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b928a8bbc10"
     "3b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
     "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594e1a2297acbbb39d"
     "502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
     "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089b"
     "eccf80cfe2df16a2cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
     "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae0784504df543af8969b"
     "e3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
     "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30c04aafdb038dda0847dd988d"
     "cda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
     "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7"
     "984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
     "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a32ef5b52a1ecc820e308aa342721aac09"
     "43bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
     "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b50d334ba77c225bc307ba537152f3f161"
     "0e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
     "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c0618983f8741c5ef68d3a101e8a3b8ca"
     "c60c905c15fc910840b94c00a0b9d0",
     "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528ecea23c436d94b"
     "5e8fcd4f681e30a6ac00a9704a188a03"),
    ("TEST SHA(abc)",
     "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
     "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd"
     "454d4423643ce80e2a9ac94fa54ca49f",
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e030"
     "3dca179c138ac17ad9bef1177331a704"),
]

L = 2**252 + 27742317777372353535851937790883648493


def interpreters():
    found = [("unix64", micropython_path())]
    for p in (os.environ.get("WASHPAY_MICROPYTHON_32"), ROOT.parent / "shared" / "tools" /
              "micropython-i386", "/work/shared/tools/micropython-i386"):
        if p and Path(p).is_file():
            found.append(("i386", str(p)))
            break
    else:
        found.append(("i386", None))
    return found


# The board side: one JSON case per line in, one JSON result per line out.
RUNNER = r"""
import sys, json
sys.path.append(%r)
from washpay.ota.sha512 import sha512
from washpay.ota.ed25519 import verify
from washpay.ota import release as RL
from washpay.journal import records as R

def h(x):
    return bytes.fromhex(x) if x is not None else None

out = {}
with open(%r) as f:
    cases = json.load(f)
for name, c in cases:
    k = c["kind"]
    try:
        if k == "sha":
            r = {"digest": sha512(h(c["msg"])).hex()}
        elif k == "verify":
            r = {"ok": verify(h(c["pub"]), h(c["msg"]), h(c["sig"]))}
        elif k == "journal_format":
            r = {"value": R.VERSION}
        elif k == "pubfile":
            r = {"ok": True, "key": RL.read_public_key(c["path"]).hex()}
        else:
            b = c["board"]
            if k == "manifest":
                doc = RL.check_manifest(h(c["manifest"]), h(c["sig"]), h(c["pub"]), b[0],
                                        b[1], b[2], b[3], c["now"])
            else:
                doc = RL.check_release(c["root"], h(c["pub"]), b[0], b[1], b[2], b[3],
                                       c["now"])
            r = {"ok": True, "version": doc["version"]}
    except RL.Refused as e:
        r = {"ok": False, "reason": str(e)}
    out[name] = r
print(json.dumps(out))
"""

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def raw_public(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


NOW = 1_800_000_000
BOARD = ["0.2.0", "esp32-devkitc", 2, 6]  # running version, board id, journal format, .mpy


def base_doc(**changes):
    doc = {
        "format": "washpay-release/1", "version": "0.3.0", "min_version": "0.1.0",
        "downgrade": False, "journal_formats": [2], "boards": ["esp32-devkitc", "sim"],
        "micropython": "1.26.0", "mpy": 6, "created": NOW - 10, "expires": NOW + 86400,
        "files": [{"path": "/main.py", "size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()},
                  {"path": "/washpay/app.mpy", "size": 0,
                   "sha256": hashlib.sha256(b"").hexdigest()}],
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def signed(manifest, key=KEY, message=None):
    return key.sign(REL.digest_message(manifest) if message is None else message)


def manifest_case(manifest=None, sig=None, board=None, now=NOW, pub=None, **changes):
    m = REL.manifest_bytes(base_doc(**changes)) if manifest is None else manifest
    return {"kind": "manifest", "manifest": m.hex(), "sig": (sig or signed(m)).hex(),
            "pub": (pub or raw_public(KEY)).hex(), "board": board or BOARD, "now": now}


def flip(data, i, bit=1):
    b = bytearray(data)
    b[i] ^= bit
    return bytes(b)


def manifest_cases():
    good = REL.manifest_bytes(base_doc())
    sig = signed(good)
    s_plus_l = sig[:32] + (int.from_bytes(sig[32:], "little") + L).to_bytes(32, "little")
    big = REL.manifest_bytes(base_doc(pad="x" * 17000))
    # name -> (case, None if accepted else a piece of the reason)
    return {
        "good manifest": (manifest_case(), None),
        "a signed downgrade": (manifest_case(version="0.1.5", downgrade=True), None),
        "one manifest byte changed": (manifest_case(good.replace(b"0.3.0", b"0.4.0"), sig),
                                      "bad signature"),
        "a bit of R flipped": (manifest_case(good, flip(sig, 3)), "bad signature"),
        "a bit of S flipped": (manifest_case(good, flip(sig, 40)), "bad signature"),
        "S not reduced (S + L)": (manifest_case(good, s_plus_l), "bad signature"),
        "signed by another key": (manifest_case(good, signed(good, OTHER)), "bad signature"),
        "the board trusts another key": (manifest_case(good, sig, pub=raw_public(OTHER)),
                                         "bad signature"),
        "signature of the bare manifest": (manifest_case(good, KEY.sign(good)),
                                           "bad signature"),
        "signature of the bare digest": (
            manifest_case(good, KEY.sign(hashlib.sha256(good).digest())), "bad signature"),
        "signature all zeros": (manifest_case(good, bytes(64)), "bad signature"),
        "an older release": (manifest_case(version="0.1.9"), "not newer than the running 0.2.0"),
        "the same version": (manifest_case(version="0.2.0"), "not newer"),
        "running below min_version": (manifest_case(min_version="0.2.1"),
                                      "updates from 0.2.1 or later; this board runs 0.2.0"),
        "another board": (manifest_case(boards=["esp32-wrover-e"]),
                          "is for boards esp32-wrover-e, not esp32-devkitc"),
        "another journal format": (manifest_case(journal_formats=[3]),
                                   "reads journal formats 3, not this board's format 2"),
        "another .mpy version": (manifest_case(mpy=5), "compiled for .mpy v5"),
        "expired": (manifest_case(now=NOW + 86400), "expired"),
        "clock not set": (manifest_case(now=None), "clock not set"),
        "writes the secrets": (manifest_case(files=[{"path": "/secrets.json", "size": 1,
                                                     "sha256": "00" * 32}]), "may not write"),
        "climbs out of /washpay": (manifest_case(files=[{"path": "/washpay/../config.json",
                                                         "size": 1, "sha256": "00" * 32}]),
                                   "may not write"),
        "a hidden file": (manifest_case(files=[{"path": "/washpay/.x.mpy", "size": 1,
                                                "sha256": "00" * 32}]), "may not write"),
        "writes the journal": (manifest_case(files=[{"path": "/journal/0", "size": 1,
                                                     "sha256": "00" * 32}]), "may not write"),
        "a hash that is not hex": (manifest_case(files=[{"path": "/main.py", "size": 1,
                                                         "sha256": "zz" * 32}]),
                                   "no size or SHA-256"),
        "no version field": (manifest_case(version=None), "field version is missing"),
        "downgrade not a boolean": (manifest_case(version="0.1.0", downgrade=1),
                                    "field downgrade is missing or not a bool"),
        "a version that is not x.y.z": (manifest_case(version="1.2"),
                                        "not MAJOR.MINOR.PATCH"),
        "signed, but not JSON": (manifest_case(b"{not json"), "not JSON"),
        "signed, another format": (manifest_case(format="washpay-release/2"),
                                   "is not washpay-release/1"),
        "too large to read": (manifest_case(big), "manifest too large"),
    }


def verify_cases():
    """Ed25519 alone: RFC 8032, `cryptography` on random keys and messages, mutations."""
    cases = {}
    for name, _sk, pk, msg, sig in RFC8032:
        cases["RFC 8032 " + name] = ({"kind": "verify", "pub": pk, "msg": msg, "sig": sig}, True)
        cases["RFC 8032 " + name + ", message changed"] = (
            {"kind": "verify", "pub": pk, "msg": (bytes.fromhex(msg) + b"!").hex(), "sig": sig},
            False)
    rnd = random.Random(8032)
    for i, n in enumerate((0, 1, 51, 111, 112, 127, 128, 129, 300)):
        key = Ed25519PrivateKey.from_private_bytes(rnd.randbytes(32))
        msg = rnd.randbytes(n)
        sig = key.sign(msg)
        pub = raw_public(key)
        c = {"kind": "verify", "pub": pub.hex(), "msg": msg.hex(), "sig": sig.hex()}
        cases[f"cryptography {i} ({n} bytes)"] = (c, True)
        for where in (0, 31, 32, 63):
            cases[f"cryptography {i} signature byte {where} flipped"] = (
                dict(c, sig=flip(sig, where, 1 << (i % 8)).hex()), False)
        cases[f"cryptography {i} public key flipped"] = (dict(c, pub=flip(pub, 5).hex()), False)
        if n:
            cases[f"cryptography {i} message flipped"] = (dict(c, msg=flip(msg, n - 1).hex()),
                                                          False)
    pk = bytes.fromhex(RFC8032[0][2])
    y_ge_p = ((2**255 - 19) + 1).to_bytes(32, "little")  # y = 1 written non-canonically
    cases["public key not canonical"] = (
        {"kind": "verify", "pub": y_ge_p.hex(), "msg": "", "sig": RFC8032[0][4]}, False)
    b_enc = "58" + "66" * 31  # the base point: R of a signature with S = 1
    s_one = (1).to_bytes(32, "little").hex()
    identity = (1).to_bytes(32, "little").hex()  # x = 0, y = 1: the neutral element
    cases["public key of small order (the neutral element)"] = (
        {"kind": "verify", "pub": identity, "msg": "6869", "sig": b_enc + s_one}, False)
    x0_odd = (1 | 1 << 255).to_bytes(32, "little").hex()  # x = 0 with the sign bit: invalid
    cases["public key x = 0 with the sign bit set"] = (
        {"kind": "verify", "pub": x0_odd, "msg": "6869", "sig": b_enc + s_one}, False)
    cases["public key short"] = (
        {"kind": "verify", "pub": pk[:31].hex(), "msg": "", "sig": RFC8032[0][4]}, False)
    cases["signature short"] = (
        {"kind": "verify", "pub": pk.hex(), "msg": "", "sig": RFC8032[0][4][:126]}, False)
    return cases


@pytest.fixture(scope="module")
def built_release(tmp_path_factory):
    """A release made by `host_tools.release.build` (real mpy-cross), and mutated copies."""
    base = tmp_path_factory.mktemp("releases")
    good = base / "good"
    REL.build(REL.P.firmware_version(), good, KEY, ["sim"], min_version="0.0.1",
              now=int(time.time()))
    doc = json.loads((good / "manifest.json").read_bytes())
    victim = doc["files"][-1]["path"]
    out = {"good": good}

    def copy(name, change):
        d = base / name
        shutil.copytree(good, d)
        change(d)
        out[name] = d

    def alter(d):
        f = d / "files" / victim.lstrip("/")
        f.write_bytes(flip(f.read_bytes(), 10))

    def truncate(d):
        f = d / "files" / victim.lstrip("/")
        f.write_bytes(f.read_bytes()[:-7])

    copy("file altered", alter)
    copy("file truncated", truncate)
    copy("file missing", lambda d: (d / "files" / victim.lstrip("/")).unlink())
    copy("manifest.sig missing", lambda d: (d / "manifest.sig").unlink())
    copy("manifest.sig altered", lambda d: (d / "manifest.sig").write_text(
        flip(bytes.fromhex((good / "manifest.sig").read_text()), 1).hex() + "\n"))
    copy("manifest.json missing", lambda d: (d / "manifest.json").unlink())
    return out, victim, doc


def release_cases(built):
    dirs, victim, doc = built
    board = ["0.0.9", "sim", REL.journal_format(), doc["mpy"]]
    now = int(time.time())

    def c(name):
        return {"kind": "release", "root": str(dirs[name]), "pub": raw_public(KEY).hex(),
                "board": board, "now": now}

    return {
        "host-built release": (c("good"), None),
        "host-built release, file altered": (c("file altered"),
                                             f"file {victim}: SHA-256 differs"),
        "host-built release, file truncated": (c("file truncated"),
                                               f"file {victim} has "),
        "host-built release, file missing": (c("file missing"), f"file {victim} is missing"),
        "host-built release, manifest.sig missing": (c("manifest.sig missing"),
                                                     "manifest.sig missing"),
        "host-built release, manifest.sig altered": (c("manifest.sig altered"),
                                                     "bad signature"),
        "host-built release, manifest.json missing": (c("manifest.json missing"),
                                                      "manifest.json missing"),
        "host-built release, another board": (dict(c("good"), board=[*board[:1], "esp32-devkitc",
                                                                      *board[2:]]),
                                              "is for boards sim, not esp32-devkitc"),
    }


def sha_cases():
    rnd = random.Random(512)
    lengths = [0, 1, 3, 55, 56, 63, 64, 111, 112, 113, 127, 128, 129, 239, 240, 255, 256, 1000]
    return {f"sha512 of {n} bytes": {"kind": "sha", "msg": rnd.randbytes(n).hex()}
            for n in lengths}


@pytest.fixture(scope="module", params=interpreters(), ids=lambda p: p[0])
def board_results(request, tmp_path_factory, built_release):
    name, exe = request.param
    if exe is None:
        pytest.skip("the 32-bit MicroPython (../shared/tools/micropython-i386) is not here: "
                    "set WASHPAY_MICROPYTHON_32")
    d = tmp_path_factory.mktemp("ota-" + name)
    pub = d / "release.pub"
    pub.write_text(REL.public_text(raw_public(KEY)))
    bad_pub = d / "bad.pub"
    bad_pub.write_text("ed25519 1234\n")
    cases = [(k, v) for k, v in sha_cases().items()]
    cases += [(k, v[0]) for k, v in verify_cases().items()]
    cases += [(k, v[0]) for k, v in manifest_cases().items()]
    cases += [(k, v[0]) for k, v in release_cases(built_release).items()]
    cases += [("journal format", {"kind": "journal_format"}),
              ("public key file", {"kind": "pubfile", "path": str(pub)}),
              ("public key file malformed", {"kind": "pubfile", "path": str(bad_pub)}),
              ("public key file missing", {"kind": "pubfile", "path": str(d / "none.pub")})]
    (d / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([exe, "-X", "heapsize=4m", "-c",
                           RUNNER % (str(FIRMWARE), str(d / "cases.json"))],
                          capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", list(sha_cases()))
def test_sha512_agrees_with_hashlib(board_results, name):
    msg = bytes.fromhex(sha_cases()[name]["msg"])
    assert board_results[name]["digest"] == hashlib.sha512(msg).hexdigest()


def test_sha512_fips_abc(board_results):
    # FIPS 180-2 appendix C.1 (the RFC 8032 "SHA(abc)" message is this digest)
    assert RFC8032[4][3] == hashlib.sha512(b"abc").hexdigest()


@pytest.mark.parametrize("name", list(verify_cases()))
def test_ed25519_verify(board_results, name):
    assert board_results[name]["ok"] is verify_cases()[name][1]


def test_rfc8032_vectors_are_what_cryptography_makes():
    """The vectors above are transcribed right: `cryptography` derives the same."""
    for name, sk, pk, msg, sig in RFC8032:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sk))
        assert raw_public(key).hex() == pk, name
        assert key.sign(bytes.fromhex(msg)).hex() == sig, name


@pytest.mark.parametrize("name", list(manifest_cases()))
def test_manifest_check(board_results, name):
    expect = manifest_cases()[name][1]
    got = board_results[name]
    if expect is None:
        assert got["ok"], got
    else:
        assert not got["ok"] and expect in got["reason"], got
        assert "\n" not in got["reason"]


@pytest.mark.parametrize("name", ["host-built release", "host-built release, file altered",
                                  "host-built release, file truncated",
                                  "host-built release, file missing",
                                  "host-built release, manifest.sig missing",
                                  "host-built release, manifest.sig altered",
                                  "host-built release, manifest.json missing",
                                  "host-built release, another board"])
def test_release_directory_check(board_results, built_release, name):
    expect = release_cases(built_release)[name][1]
    got = board_results[name]
    if expect is None:
        assert got == {"ok": True, "version": built_release[2]["version"]}
    else:
        assert not got["ok"] and expect in got["reason"], got


def test_journal_format_the_host_writes_is_the_firmware_constant(board_results):
    assert board_results["journal format"]["value"] == REL.journal_format()


def test_public_key_file(board_results):
    assert board_results["public key file"] == {"ok": True, "key": raw_public(KEY).hex()}
    for name in ("public key file malformed", "public key file missing"):
        got = board_results[name]
        assert not got["ok"] and "no release public key" in got["reason"], got


def test_only_the_update_path_imports_the_ota_package():
    """washpay.ota costs heap only while an update is checked: no module outside it (boot,
    the payment path, the sync link) imports it. washpay/updates.py is the update path's
    own start (an offer, a trial, a download to resume): the app imports it only then."""
    for src in FIRMWARE.rglob("*.py"):
        if "ota" in src.relative_to(FIRMWARE).parts or src.name == "updates.py":
            continue
        text = src.read_text()
        assert "washpay.ota" not in text and "from washpay import ota" not in text, src


# The release check's heap budget at ESP32 object sizes (the 32-bit interpreter), the whole
# process included: bench_release measures about 28 KiB (25 KiB over an empty script's) for
# this firmware's 46-file release. It runs only while an update is checked.
OTA_HEAP_BUDGET = "40k"


def test_release_check_fits_its_heap_budget_at_esp32_sizes(built_release, tmp_path):
    exe = dict(interpreters())["i386"]
    if exe is None:
        pytest.skip("the 32-bit MicroPython is not here: set WASHPAY_MICROPYTHON_32")
    dirs, _, doc = built_release
    good = dirs["good"]
    script = (f"import sys\nsys.path.insert(0, {str(good / 'files')!r})\n"
              "from washpay.ota import release as RL\n"
              f"d = RL.check_release({str(good)!r}, bytes.fromhex({raw_public(KEY).hex()!r}), "
              f"'0.0.9', 'sim', {REL.journal_format()}, {doc['mpy']}, {int(time.time())})\n"
              "print('ok', d['version'])\n")
    proc = subprocess.run([exe, "-X", f"heapsize={OTA_HEAP_BUDGET}", "-c", script],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr
