"""Pure alert rules: stored data and context in, alert changes out (no I/O, no clock, no settings).

`model` holds the types every rule and the `alerts` package share: the inputs (`Sample`,
`DeviceStatus`, `GapGivenUp`, …) and the outputs (`Fire`, `Clear`, keyed by `AlertKey`).
"""
