metadata(description="washpay payment-module firmware", version="0.1.0")

package("washpay")
module("main.py", base_path="..")
