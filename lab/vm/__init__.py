"""The lab inside a VM with a stock Debian kernel: real IPVS and netem where the host has
neither (`make vm-test`, `lab vm ...`). image: build the image once; runner: boot it and run a
job; follow: the job's output and the console, live; cli: the `lab vm` commands and the host
side of the VM tests."""
