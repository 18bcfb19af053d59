"""A packaged function: upload the folder as a zip with handler=app.count."""
from textstats import top_words


def count(event, context):
    text = event.get("text", "")
    return {"words": len(text.split()), "top": top_words(text, event.get("n", 3))}
