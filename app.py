"""The web chat: `python app.py` (or `vqa serve`) starts it and prints its URL. The app lives in vqa/webapp.py."""
from vqa.webapp import build_demo, launch

demo = build_demo()

if __name__ == "__main__":
    launch(demo)
