"""What generation costs on each kind of device, stated to the user in one place (the Generate
panel and ``viewforge generate --help`` read it). No imports: the command line and the panel read
it at start-up."""

#: Minutes one default generation (Zero123++ v1.2, 4 aware steps, fp32) takes on a CPU at full
#: size: 179 s per guided denoise with the 512 px condition, plus decoding, encoding and the fits
#: (docs/zero123pp.md).
CPU_MINUTES = 35

#: What a CPU user should expect.
CPU_NOTE = (f"On a CPU one generation takes about {CPU_MINUTES} minutes at full size; "
            "use an NVIDIA GPU (CUDA) or Apple silicon (MPS)")
