"""From a loaded model to text: evaluation over a manifest (evaluate), transcription of files (transcribe) and long
recordings (longform), exact batched streaming (streaming), post-processing (recognizer), test-time warp search
(warp_search)."""
