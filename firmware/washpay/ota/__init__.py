# washpay.ota: over-the-air updates (docs/release-format.md). Imported only by the update
# path, never at boot or on the payment path: its modules cost heap only while an update is
# being checked.
