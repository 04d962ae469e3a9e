"""CPython stand-in for MicroPython's `cryptolib`, on the `cryptography` package.

Behaves like the ESP32 build: `aes(key, mode, iv=None)` with mode 1 (ECB) or 2 (CBC) only,
16- or 32-byte keys, data a multiple of 16 bytes, an optional output buffer, CBC chaining
carried across calls, and one object either encrypting or decrypting, never both. Errors are
ValueError with MicroPython's messages so firmware code sees the same failures here.
"""

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_MODE_ECB = 1
_MODE_CBC = 2


class aes:  # lower case: MicroPython's name for it
    def __init__(self, key, mode, iv=None):
        if len(key) not in (16, 32):
            raise ValueError("key")
        if mode == _MODE_ECB:
            cipher_mode = modes.ECB()
        elif mode == _MODE_CBC:
            if iv is None or len(iv) != 16:
                raise ValueError("IV")
            cipher_mode = modes.CBC(bytes(iv))
        else:
            raise ValueError("mode")
        self._cipher = Cipher(algorithms.AES(bytes(key)), cipher_mode)
        self._context = None
        self._encrypting = None

    def encrypt(self, data, out=None):
        return self._run(True, data, out)

    def decrypt(self, data, out=None):
        return self._run(False, data, out)

    def _run(self, encrypting, data, out):
        if self._encrypting is None:
            self._encrypting = encrypting
            self._context = self._cipher.encryptor() if encrypting else self._cipher.decryptor()
        elif self._encrypting != encrypting:
            raise ValueError("can't encrypt & decrypt")
        if len(data) % 16:
            raise ValueError("blksize % 16")
        if out is not None and len(out) < len(data):
            raise ValueError("output too small")
        result = self._context.update(bytes(data))
        if out is None:
            return result
        out[: len(result)] = result
        return out
