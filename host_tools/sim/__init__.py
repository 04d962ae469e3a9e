"""The simulated board: `washpay sim run` (runner) and `washpay sim ctl` (client)."""
