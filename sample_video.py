"""Generate a video from a text prompt: `python sample_video.py --prompt "..." --video-size 544 960`.

A thin entry point; the flags are documented in docs/CLI.md and implemented in `hyvideo.cli`.
"""

from hyvideo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
