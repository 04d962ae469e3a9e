# washpay: payment-module firmware for washing machines and dryers (ESP32, MicroPython).
VERSION = "0.1.0"
