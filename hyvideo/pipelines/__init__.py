"""The official HunyuanVideo 1.5 Python API (`hyvideo.pipelines.hunyuan_video_pipeline`), on our Generator."""
