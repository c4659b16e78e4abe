"""The study tools around the library: real offline assets, data sets, linear probes, damage
measures, rankings, select-eval and the demo.

The library (`fxapprox` outside this subpackage) never imports them; they import the library.
"""
