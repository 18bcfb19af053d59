"""Asks the run's model (its modelId) a question through the worker."""
import infra_ai


def handler(event, context):
    question = event.get("question", "What is a warm pool?")
    try:
        answer = infra_ai.generate(question, temperature=0)
    except infra_ai.AIError as e:  # node down, unknown model, call budget spent...
        return {"model": context.model_id, "error": str(e)}
    return {"model": context.model_id, "answer": answer}
