"""hyvideo: a text-to-video sampler compatible with Tencent HunyuanVideo."""

__version__ = "0.1.0"
