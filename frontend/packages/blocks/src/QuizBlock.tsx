"use client";
// Generate a quiz: each question appears as soon as its `part` event arrives, and the
// learner can answer it (keyboard or pointer) and read the explanation right away.
import { useEffect, useId, useMemo, useRef, useState, type FormEvent } from "react";
import type { QuizInput, QuizQuestion } from "@live-ai/client";
import { useBlockStreamOf, type BlockProps } from "./block-stream.js";
import { BlockFrame, isActive, LiveOutput } from "./BlockFrame.js";

type Difficulty = NonNullable<QuizInput["difficulty"]>;

export function QuizBlock(props: BlockProps<"quiz"> & { initialTopic?: string }) {
  const stream = useBlockStreamOf("quiz", props);
  const [topic, setTopic] = useState(props.initialTopic ?? "");
  const [count, setCount] = useState(3);
  const [difficulty, setDifficulty] = useState<Difficulty>("medium");
  const submit = (event: FormEvent) => {
    event.preventDefault();
    stream.start({ topic, count, difficulty });
  };
  const active = isActive(stream.status);
  const questions = stream.parts.filter(Boolean);
  const announced = useMemo(() => stream.parts.filter(Boolean).map((question, index) => `Question ${index + 1}: ${question.question}`), [stream.parts]);
  return (
    <BlockFrame
      blockType="quiz"
      title="Quiz"
      stream={stream}
      errorMessages={props.errorMessages}
      labels={props.labels}
      form={
        <form onSubmit={submit}>
          <label>
            Topic
            <input value={topic} onChange={(e) => setTopic(e.target.value)} required maxLength={500} />
          </label>
          <label>
            Questions
            <input type="number" min={1} max={10} value={count} onChange={(e) => setCount(Number(e.target.value))} />
          </label>
          <label>
            Difficulty
            <select value={difficulty} onChange={(e) => setDifficulty(e.target.value as Difficulty)}>
              <option value="easy">easy</option>
              <option value="medium">medium</option>
              <option value="hard">hard</option>
            </select>
          </label>
          <button type="submit" disabled={active || topic.trim() === ""}>
            Make quiz
          </button>
        </form>
      }
    >
      <LiveOutput busy={active} announce={announced}>
        <ol className="quiz-questions">
          {questions.map((question, index) => (
            // Keyed by stream and position: a new quiz gets fresh, unanswered questions.
            <li key={`${stream.streamId}-${index}`}>
              <QuizQuestionCard question={question} number={index + 1} />
            </li>
          ))}
        </ol>
        {active && stream.text !== "" && (
          <p className="quiz-progress">Writing question {questions.length + 1}…</p>
        )}
      </LiveOutput>
    </BlockFrame>
  );
}

function QuizQuestionCard({ question, number }: { question: QuizQuestion; number: number }) {
  const [choice, setChoice] = useState<number | null>(null);
  const [checked, setChecked] = useState(false);
  const name = useId();
  const feedback = useRef<HTMLDivElement>(null);
  // Checking disables the focused button; focus moves to the verdict so keyboard users stay put.
  useEffect(() => {
    if (checked) feedback.current?.focus();
  }, [checked]);
  const check = (event: FormEvent) => {
    event.preventDefault();
    if (choice !== null) setChecked(true);
  };
  const correct = choice === question.answer_index;
  return (
    <form className="quiz-question" onSubmit={check}>
      <fieldset disabled={checked}>
        <legend>
          {number}. {question.question}
        </legend>
        {question.choices.map((text, index) => (
          <label key={index} className="quiz-choice">
            <input type="radio" name={name} value={index} checked={choice === index} onChange={() => setChoice(index)} />
            {text}
          </label>
        ))}
        <button type="submit" disabled={choice === null}>
          Check answer
        </button>
      </fieldset>
      {checked && (
        <div ref={feedback} tabIndex={-1} className={correct ? "feedback correct" : "feedback wrong"} role="status">
          <strong>{correct ? "Correct!" : `Not quite — the answer is “${question.choices[question.answer_index]}”.`}</strong>
          <p className="explanation">{question.explanation}</p>
        </div>
      )}
    </form>
  );
}
