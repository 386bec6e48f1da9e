"""Many runs → one table and overlaid curves: grid sweeps and run listings (`picstory sweep`, `picstory runs`).

The modules are imported by name (`picstory.compare.sweep`), so `picstory runs` does not pay for importing torch.
"""
