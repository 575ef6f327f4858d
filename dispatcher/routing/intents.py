"""Built-in intent phrase and pattern sets, written for voice transcripts.

Two kinds of intent:

- **closed** intents (confirmation, greeting, thanks, ...) are short social acts; a turn
  *is* one when, after removing their phrases and the fillers, nothing is left
  (``IntentRule(whole=True)``);
- **open** intents (code, math, troubleshooting, ...) are found anywhere in a turn: by
  phrases (word sequences, matched token by token: one dict lookup a word), and by regular
  expressions that only run when one of their trigger words is in the turn. Python's
  ``re`` scans a big alternation at every character, which costs tens of microseconds a
  turn; the trigger gate keeps a decision in the low microseconds.

All matching runs on the normalised text (:func:`dispatcher.routing.text.normalise`):
lower case, no punctuation but apostrophes, fillers removed, single spaces.
"""

from __future__ import annotations

from dataclasses import dataclass

# Phrases of the closed intents. Order does not matter; longer phrases win when compiled.
CLOSED_INTENTS: dict[str, list[str]] = {
    "confirmation": [
        "whatever works",
        "put it through",
        "like you said",
        "go ahead and put it through",
        "that's fine i mean",
        "sounds fine",
        "whatever you think",
        "either is fine",
        "either one",
        "that one",
        "the first one",
        "the second one",
        "yes",
        "yeah",
        "yep",
        "yup",
        "ya",
        "yea",
        "yes please",
        "yes sir",
        "yes ma'am",
        "sure",
        "sure thing",
        "ok",
        "okay",
        "okey",
        "k",
        "alright",
        "all right",
        "right",
        "correct",
        "that's correct",
        "thats correct",
        "that is correct",
        "that's right",
        "thats right",
        "that is right",
        "exactly",
        "absolutely",
        "definitely",
        "of course",
        "uh huh",
        "mhm",
        "mm hmm",
        "mhmm",
        "sounds good",
        "that sounds good",
        "sounds great",
        "that works",
        "that works for me",
        "works for me",
        "perfect",
        "great",
        "good",
        "fine",
        "that's fine",
        "thats fine",
        "go ahead",
        "please do",
        "do it",
        "confirm",
        "confirmed",
        "i confirm",
        "affirmative",
        "you got it",
        "that'll work",
        "that will work",
        "i agree",
        "agreed",
        "sounds about right",
        "i think so",
        "yes it is",
        "yes i do",
        "yes i am",
        "yes it does",
        "yes that's it",
        "that's it",
        "that's the one",
        "cool",
        "awesome",
        "nice",
        "got it",
        "i got it",
        "understood",
        "i understand",
        "makes sense",
        "that makes sense",
        "lovely",
        "wonderful",
        "excellent",
        "indeed",
        "please",
        "yes that's fine",
        "go for it",
        "let's do it",
        "lets do it",
        "book it",
        "i'd like that",
        "i would like that",
        "yes i would",
        "sure why not",
        "why not",
    ],
    "denial": [
        "no",
        "nope",
        "nah",
        "no no",
        "no thanks",
        "no thank you",
        "not really",
        "not at all",
        "no it's not",
        "no it isn't",
        "no i don't",
        "no i didn't",
        "that's wrong",
        "that's not right",
        "that's incorrect",
        "incorrect",
        "wrong",
        "never mind",
        "nevermind",
        "i don't think so",
        "negative",
        "not now",
        "not yet",
        "no that's it",
        "no that's all",
        "nothing else",
        "no i'm good",
        "i'm good",
        "i'm fine",
        "not today",
        "don't",
        "please don't",
        "no way",
    ],
    "greeting": [
        "can you help me",
        "can you help me with something",
        "i need help",
        "i have a question",
        "i need some help",
        "quick question",
        "hi",
        "hello",
        "hey",
        "hey there",
        "hi there",
        "hello there",
        "good morning",
        "good afternoon",
        "good evening",
        "morning",
        "howdy",
        "greetings",
        "yo",
        "hiya",
        "hello hello",
        "hi how are you",
        "hello how are you",
        "how are you",
        "how are you doing",
        "how's it going",
        "how are things",
        "what's up",
        "hey how's it going",
        "is anyone there",
        "anyone there",
        "can you hear me",
        "are you there",
        "hello is this",
        "hi is this",
    ],
    "farewell": [
        "bye",
        "goodbye",
        "good bye",
        "bye bye",
        "see you",
        "see ya",
        "talk to you later",
        "take care",
        "have a good day",
        "have a nice day",
        "have a great day",
        "have a good one",
        "have a good night",
        "good night",
        "that's all",
        "that's it for now",
        "that's all i needed",
        "that's everything",
        "that is all",
        "i'm done",
        "we're done",
        "that'll be all",
        "that will be all",
        "i'm all set",
        "all set",
        "nothing else",
        "that's all for today",
        "cheers",
        "later",
        "catch you later",
    ],
    "thanks": [
        "you've been really helpful",
        "you've been so helpful",
        "that helps",
        "that helped",
        "that's very helpful",
        "really helpful",
        "so helpful",
        "thank you so much",
        "thanks",
        "thank you",
        "thank you so much",
        "thanks so much",
        "thanks a lot",
        "many thanks",
        "thank you very much",
        "thanks very much",
        "much appreciated",
        "appreciate it",
        "i appreciate it",
        "i appreciate that",
        "appreciate that",
        "thx",
        "ty",
        "cheers",
        "that's helpful",
        "that was helpful",
        "very helpful",
        "helpful",
        "thanks for your help",
        "thank you for your help",
        "thanks for the help",
        "thank you for helping",
        "you've been very helpful",
        "you've been helpful",
        "you're the best",
        "thank you kindly",
    ],
    "repeat": [
        "spell that",
        "spell it",
        "could you spell that",
        "can you spell that",
        "spell that for me",
        "could you spell that for me",
        "repeat the",
        "can you repeat",
        "could you repeat",
        "please repeat",
        "say the",
        "repeat what you said",
        "repeat the last",
        "what was that last bit",
        "the last bit",
        "the last step",
        "repeat the last step",
        "say that again",
        "i didn't catch the last part",
        "didn't catch the last part",
        "the last part",
        "repeat the last part",
        "i didn't catch it",
        "didn't catch it",
        "the last part",
        "slow down",
        "slow down a little",
        "a little",
        "speak up",
        "you cut out",
        "i missed that",
        "missed that",
        "what was the last thing",
        "one more time",
        "come again please",
        "slower",
        "a bit slower",
        "more slowly",
        "louder",
        "a little louder",
        "say that again slower",
        "one more time please",
        "repeat",
        "repeat that",
        "can you repeat that",
        "could you repeat that",
        "repeat that please",
        "say that again",
        "can you say that again",
        "could you say that again",
        "sorry",
        "pardon",
        "pardon me",
        "come again",
        "what",
        "huh",
        "what was that",
        "sorry what was that",
        "i didn't catch that",
        "i didn't hear you",
        "i didn't get that",
        "one more time",
        "say again",
        "what did you say",
        "sorry what",
        "excuse me",
        "slower please",
        "can you speak slower",
        "can you slow down",
        "i can't hear you",
        "you're breaking up",
        "sorry i missed that",
        "can you go back",
    ],
    "hold": [
        "hold on a minute",
        "my kid's yelling",
        "one minute",
        "give me a moment",
        "someone's at the door",
        "hold on hold on",
        "give me one sec",
        "brb",
        "be right back",
        "let me grab a pen",
        "let me get a pen",
        "grabbing a pen",
        "hold on",
        "hold on a sec",
        "hold on a second",
        "one sec",
        "one second",
        "just a sec",
        "just a second",
        "give me a sec",
        "give me a second",
        "give me a minute",
        "wait",
        "wait a sec",
        "wait a second",
        "wait a minute",
        "hang on",
        "hang on a sec",
        "one moment",
        "just a moment",
        "bear with me",
        "let me check",
        "let me think",
        "let me see",
        "let me look",
        "hmm let me see",
        "let me grab my card",
        "let me find it",
        "let me get my card",
    ],
    "cancel": [
        "never mind leave it as is",
        "leave it as is",
        "leave it",
        "forget about it",
        "cancel",
        "cancel that",
        "stop",
        "stop that",
        "forget it",
        "forget that",
        "scratch that",
        "never mind that",
        "start over",
        "go back",
        "undo",
        "undo that",
        "quit",
        "exit",
        "stop please",
        "cancel please",
    ],
    "agent": [
        "can i speak with",
        "can i speak to",
        "can i talk to",
        "speak with the pharmacist",
        "the pharmacist",
        "speak with a manager",
        "speak with someone",
        "transfer me to billing",
        "talk to a real person",
        "i just want to talk to a real person",
        "transfer me to someone",
        "transfer me to someone in billing",
        "transfer me",
        "someone in billing",
        "get me a manager",
        "this is ridiculous",
        "let me speak to your manager",
        "your supervisor",
        "a supervisor",
        "connect me",
        "put me through",
        "talk to a machine",
        "i don't want to talk to a machine",
        "get me a real person",
        "real person",
        "a live person",
        "no more robots",
        "agent",
        "talk to a real person",
        "speak to a real person",
        "speak with someone",
        "talk with someone",
        "speak with a person",
        "speak with an agent",
        "live agent",
        "live person",
        "representative",
        "operator",
        "human",
        "a human",
        "real person",
        "a real person",
        "talk to a person",
        "speak to a person",
        "talk to a human",
        "speak to a human",
        "talk to someone",
        "speak to someone",
        "talk to an agent",
        "speak to an agent",
        "speak to a representative",
        "talk to a representative",
        "customer service",
        "transfer me",
        "can i talk to a person",
        "can i speak to someone",
        "i want to speak to a manager",
        "manager",
        "speak to a manager",
        "let me talk to someone",
        "connect me to an agent",
        "get me a human",
        "i want a human",
        "put me through to someone",
    ],
    "smalltalk": [
        "who am i speaking to",
        "who am i speaking with",
        "is this a robot",
        "is this a real person",
        "am i talking to a robot",
        "the weather's been crazy",
        "the weather's been crazy right",
        "crazy right",
        "been crazy",
        "it's been crazy out there",
        "crazy weather",
        "with the snow",
        "with the rain",
        "haha yeah",
        "yeah haha",
        "oh nice",
        "good to know",
        "fair enough",
        "no rush",
        "take your time",
        "you sound so real",
        "you sound real",
        "you sound human",
        "is it raining where you are",
        "nice to meet you",
        "how's your day",
        "how is your day",
        "how's your day going",
        "nice weather today",
        "what's your name",
        "who are you",
        "are you a robot",
        "are you a bot",
        "are you a real person",
        "are you human",
        "is this a robot",
        "lol",
        "haha",
        "ha ha",
        "oh",
        "oh okay",
        "oh ok",
        "ah",
        "ah okay",
        "i see",
        "oh i see",
        "wow",
        "oh wow",
        "interesting",
        "really",
        "oh really",
        "no worries",
        "no problem",
        "you too",
        "same to you",
        "likewise",
        "me too",
        "good thanks",
        "i'm good thanks",
        "not bad",
        "doing well",
        "i'm doing well",
        "pretty good",
        "i'm fine thanks",
        "fine thanks",
        "can't complain",
    ],
}

# Words that carry no content in a short turn and may surround a closed intent.
FILLER_WORDS = frozenset(
    [
        "uh",
        "um",
        "uhm",
        "umm",
        "uhh",
        "er",
        "erm",
        "hmm",
        "hm",
        "ah",
        "ahh",
        "eh",
        "oh",
        "so",
        "well",
        "like",
        "just",
        "and",
        "but",
        "also",
        "then",
        "okay",
        "ok",
        "yeah",
        "please",
        "sir",
        "ma'am",
        "man",
        "dude",
        "buddy",
        "again",
        "now",
        "very",
        "much",
        "really",
        "actually",
        "then",
        "alright",
        "i",
        "mean",
        "you",
        "know",
    ]
)

NUM = "<num>"  # trigger pseudo-token: the turn has a number (digits or a number word)
CODE_CHARS = "<code>"  # trigger pseudo-token: the raw turn has code punctuation


@dataclass(frozen=True, slots=True)
class Gated:
    """A regex over the normalised turn that runs only when a trigger token is present."""

    triggers: frozenset[str]
    pattern: str
    min_numbers: int = 0
    raw: bool = False  # match the raw (lower-cased) turn instead of the normalised one


@dataclass(frozen=True, slots=True)
class OpenIntent:
    phrases: tuple[str, ...] = ()
    gated: tuple[Gated, ...] = ()


def _g(triggers: str, pattern: str, min_numbers: int = 0, raw: bool = False) -> Gated:
    return Gated(frozenset(triggers.split()), pattern, min_numbers, raw)


def _p(text: str) -> tuple[str, ...]:
    """Phrases, one a line."""
    return tuple(line.strip() for line in text.strip().splitlines() if line.strip())


_NUM_WORD = (
    r"(?:\d[\d.,]*|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"fifteen|twenty|thirty|forty|fifty|hundred|thousand)"
)
_NEG = (
    "not isn't isnt doesn't doesnt won't wont can't cant cannot couldn't stopped stops "
    "keep keeps kept failed fails unable refuses never"
)

OPEN_INTENTS: dict[str, OpenIntent] = {
    "summarize": OpenIntent(
        phrases=_p("""
            highlights for
            bullet point highlights
            bullet-point highlights
            key highlights
            what's the summary
            what is the summary
            short version
            shorter version
            the cliff notes
            cliffnotes
            summarize
            summarise
            summarized
            summarised
            summarizing
            summarising
            summarization
            recap
            recapping
            sum up
            sum it up
            sum this up
            sum that up
            sum everything up
            sum things up
            tl dr
            tldr
            the gist
            gist of
            key points
            main points
            key takeaways
            main takeaways
            in a nutshell
            boil it down
            condense
            synopsis
            brief overview
            quick overview
            short overview
            high level overview
        """),
        gated=(
            _g(
                "summary",
                r"\bsummary of (?:the |this |our |that |these |those |my )?(?:call|"
                r"conversation|chat|discussion|meeting|article|document|text|report|email|thread|"
                r"passage|paper|above|story|book|chapter|transcript|notes|what|everything|it)\b",
            ),
            _g(
                "summary",
                r"\b(?:give|write|make|provide|need|want|send|do|prepare|draft|get)\b"
                r"(?: me| us)?(?: a| an| the)?(?: quick| short| brief| one line| executive| "
                r"detailed| full)? summary\b(?! of my)",
            ),
            _g(
                "what",
                r"\bwhat (?:did|have|were) we (?:just |already )?(?:talk(?:ed|ing)? about|"
                r"discuss(?:ed|ing)?|agree(?:d)?(?: on)?|cover(?:ed)?|decide(?:d)?|go over|"
                r"settle(?:d)? on)\b|\bwhat was (?:agreed|decided|discussed)\b",
            ),
            _g(
                "over through",
                r"\b(?:go|run) (?:back )?(?:over|through) (?:everything|what we|"
                r"all (?:of )?(?:that|this|what)|the (?:call|conversation|whole thing))\b",
            ),
            _g(
                "about saying",
                r"\bwhat (?:is|was|are) (?:this|the) (?:article|document|report|"
                r"text|paper|passage|email|thread|story) (?:about|saying)\b",
            ),
            _g(
                "bullet",
                r"\bbullet points?\b.*\b(?:call|conversation|article|document|text|"
                r"report|above|email|thread|meeting|discussion)\b",
            ),
        ),
    ),
    "code": OpenIntent(
        phrases=_p("""
            o n time
            o n log n
            o n
            o 1 space
            big-o
            python
            javascript
            typescript
            golang
            kotlin
            c++
            c#
            php
            perl
            scala
            haskell
            bash script
            shell script
            powershell
            sql
            html
            css
            regex
            regexp
            regular expression
            numpy
            pandas
            django
            flask
            nodejs
            node js
            fastapi
            dockerfile
            kubernetes
            terraform
            java
            stack trace
            traceback
            syntax error
            runtime error
            compile error
            null pointer
            nullpointerexception
            segfault
            segmentation fault
            linked list
            binary tree
            binary search
            hash map
            hashmap
            hash table
            time complexity
            space complexity
            big o
            recursion
            recursive
            for loop
            while loop
            unit test
            unit tests
            pull request
            merge conflict
            compiler
            source code
            code snippet
            code review
            write code
            a function
            this function
            the function that
            an algorithm
            algorithm
            rest api
            api endpoint
            dynamic programming
            leetcode
            array of integers
            list of integers
            integer array
            boolean
        """),
        gated=(
            _g(
                "write implement create build generate fix debug refactor optimize optimise code",
                r"\b(?:write|implement|create|build|generate|fix|debug|refactor|optimi[sz]e|code)\b"
                r"(?: me)?(?: a| an| the| this| my| some)?(?: \w+){0,2} (?:function|program|script|"
                r"method|algorithm|query|snippet|code|unit tests?|endpoint|loop|module|api|bug|app|"
                r"application|class)\b",
            ),
            _g(
                CODE_CHARS,
                r"```|\bdef \w+\s*\(|\breturn\b[^\n]*[;)]|^\s*(?:import|from) \w+|"
                r"#include|console\.log|\bprint\s*\(|\bselect\b[^\n]*\bfrom\b|\bint main\b|=>|"
                r"\bfn \w+|\b(?:var|const|let) \w+\s*=|\w+\([^)\n]*\)\s*[{:;]|[{};]\s*$",
                raw=True,
            ),
        ),
    ),
    "math": OpenIntent(
        phrases=_p("""
            kilometers to miles
            miles to kilometers
            pounds to kilograms
            sum of all
            even numbers
            odd numbers
            which one's cheaper
            times as many
            times as much
            as many as
            twice as many
            half as many
            how many marbles
            find all
            find the value
            find the area
            find the sum
            find the number
            how many positive
            divisors
            divisible
            real numbers
            integers
            integer
            triangle
            perimeter
            radius
            circle
            polynomial
            days from today
            day of the week will
            mm dd yyyy
            what is the date
            how many full
            how many weeks
            how many days will
            how long will it take
            pages a night
            miles per
            per hour
            combinations
            permutations
            how many different
            in how many
            minimum number of
            maximum number of
            the ratio
            remainder
            average speed
            miles per hour
            mph
            km h
            simple interest
            annual interest
            monthly payment
            break even
            break-even
            tip on
            leave a tip
            percent tip
            split the bill
            what do i pay
            what would i pay
            what will i pay
            show me the math
            show your work
            the math
            add up to
            adds up to
            how much did she
            how much did he
            how much did they
            how much does each
            how much will each
            how much should each
            what is the least
            what's the least
            what is the most
            what's the most
            at what time
            how many more
            how many fewer
            how much more
            how much less
            how much change
            calculate
            compute
            solve for
            equation
            equations
            derivative
            integral
            probability
            square root
            factorial
            percent of
            percentage of
            logarithm
            expected value
            standard deviation
            compound interest
            amortization
            amortisation
            prime number
            prime numbers
            greatest common
            least common
            sum of the
            product of
            how many ways
            arithmetic
        """),
        gated=(
            _g(
                NUM,
                rf"{_NUM_WORD}\s*(?:[-+*/^×÷x]|plus|minus|times|divided by|multiplied by|"
                rf"to the power of)\s*{_NUM_WORD}",
            ),
            _g(
                "how what",
                r"\b(?:how (?:much|many|long|far|old|fast)|what (?:is|was|will be|"
                r"would be) the (?:total|average|difference|sum|ratio|remainder|result|final|new)|"
                r"what percent(?:age)?)\b.*\b(?:total|altogether|in all|left|remain(?:ing|s)?|"
                r"each|per|every|average|twice|half|thrice|times as|more than|less than|fewer|"
                r"combined|after|rate|percent|off|discount|interest|split|if)\b",
                min_numbers=2,
            ),
            _g(
                NUM,
                r"\b(?:if|then|each|every|per|twice|half|total|altogether|remaining|left)\b"
                r".*\b(?:how (?:much|many|long|far|old)|what(?:'s| is|was) the (?:total|average|"
                r"difference|sum|cost|price))\b",
                min_numbers=2,
            ),
            _g(NUM, r"\b(?:percent|percentage)\b|%", min_numbers=2),
            _g(
                NUM,
                r"\b(?:plus|minus|each|per|total|extra|difference|left over|times|"
                r"altogether|combined|add up|adds up)\b",
                min_numbers=4,
            ),
            _g(
                CODE_CHARS,
                r"\\frac|\\sqrt|\^\{|\\le\b|\\ge\b|\\cdot|\\pi|\$[^$\n]*[=^<>][^$\n]*\$",
                raw=True,
            ),
            _g("convert degrees", r"\b(?:convert|degrees)\b", min_numbers=1),
            # a multiple-choice question with quantities in it is a calculation
            _g(NUM, r"(?:^|\n|\s)\(?[b-d][).:]\s*[-$]?\d", min_numbers=3, raw=True),
            # many quantities and a "how much": a word problem, even without relation words
            _g(
                "how what's whats what",
                r"\b(?:how (?:much|many)|what(?:'s| is) the total)\b",
                min_numbers=5,
            ),
        ),
    ),
    "troubleshooting": OpenIntent(
        phrases=_p("""
            power's out
            power's been out
            been out since
            neighbors have power
            has been out
            keeps giving
            giving me an error
            gives me an error
            an error when
            error when i
            says delivered
            it's not here
            didn't get it
            never arrived
            never received
            hasn't arrived
            missing package
            package is missing
            locked out
            password is wrong
            says my password
            i just reset
            just reset it
            won't let me log in
            can't log in
            cannot log in
            paper jam
            jammed
            stuck anywhere
            i opened every
            says paper
            got declined
            was declined
            card declined
            declined but
            keeps getting declined
            not going through
            won't go through
            but i have money
            bounced
            i've already
            we've already
            what's going on
            keeps going off
            cuts out
            cutting out
            stay cold
            stays cold
            won't stay
            drops after
            is showing
            showing e
            error e
            like clockwork
            doesn't fix
            didn't fix
            if that doesn't
            still broken
            the breaker
            breaker
            tripped
            changed the batteries
            replaced the batteries
            coming out cold
            blowing cold
            is cold
            looks fine
            seems fine
            i've reinstalled
            i've tried
            i've restarted
            i've cleared
            i've reset
            i've rebooted
            i already
            already hit
            doesn't spin
            won't spin
            just hums
            nothing prints
            nothing happens
            not printing
            it still just
            still just
            i restarted
            we restarted
            i rebooted
            we rebooted
            i updated
            we updated
            i cleared
            we cleared
            i reinstalled
            i unplugged
            i checked
            we checked
            i replaced
            only happens
            only when i'm
            it's still doing
            still doing it
            calls drop
            shows delivered
            stays cold
            blowing warm
            popping noise
            popping noises
            grinding noise
            weird noise
            strange noise
            clicking noise
            what could be going
            what could it be
            what could be causing
            what's causing
            what is causing
            likely causes
            what else could
            keeps asking
            keeps logging
            keeps declining
            keeps saying
            keeps showing
            keeps beeping
            keeps failing
            keeps timing out
            in a loop
            times out
            error code
            error message
            troubleshoot
            troubleshooting
            diagnose
            diagnostic
            glitch
            glitching
            glitchy
            malfunction
            malfunctioning
            blue screen
            bsod
            check engine light
            dial tone
            no signal
            no internet
            no service
            no power
            no sound
            no picture
            no wifi
            dead zone
            blinking red
            flashing red
            blinking orange
            flashing orange
            blinking light
            flashing light
            solid red
            red light
            orange light
            amber light
            dropped calls
            dropping calls
            keeps dropping
            keeps crashing
            keeps freezing
            keeps disconnecting
            keeps restarting
            keeps rebooting
            keeps buffering
            keeps kicking me
            really slow
            so slow
            very slow
            super slow
            firmware
            factory reset
            already tried
            already restarted
            already rebooted
            already reset
            already unplugged
            already reinstalled
            already checked
            already cleared
            tried restarting
            tried rebooting
            tried resetting
            tried unplugging
            tried reinstalling
            tried everything
            tried turning it
            restarted it
            rebooted it
            unplugged it
            power cycled
            power cycle
            power cycling
            not working
            stopped working
            isn't working
            won't turn on
            won't start
            won't connect
            won't load
            won't charge
            won't print
            can't connect
            cannot connect
            overheating
        """),
        gated=(
            _g(
                _NEG,
                r"\b(?:not|isn't|isnt|doesn't|doesnt|won't|wont|can't|cant|cannot|couldn't|"
                r"stopped|stops|keeps?|kept|failed to|fails to|unable to|refuses to|never)"
                r"(?: \w+){0,2} (?:work(?:ing|s)?(?! for (?:me|us)| anymore| then)|"
                r"connect(?:ing|s)?|"
                r"turn(?:ing)? on|power(?:ing)? on|"
                r"charg(?:e|ing)|load(?:ing)?|boot(?:ing)?|start(?:ing)?|sync(?:ing)?|print(?:ing)?|"
                r"respond(?:ing)?|pair(?:ing)?|updat(?:e|ing)|install(?:ing)?|drop(?:ping|s)?|"
                r"crash(?:ing|es)?|freez(?:e|ing|es)|disconnect(?:ing|s)?|reboot(?:ing|s)?|"
                r"restart(?:ing|s)?|buffer(?:ing)?|lag(?:ging)?|overheat(?:ing)?|cool(?:ing)?|"
                r"heat(?:ing)?|drain(?:ing|s)?|leak(?:ing|s)?|receiving|sending|ringing|"
                r"log(?:ging)? ?in|sign(?:ing)? ?in|go(?:ing)? through)\b",
            ),
            _g(
                "is went goes seems keeps",
                r"\b(?:internet|wifi|wi-fi|connection|speed|computer|"
                r"laptop|phone|tv|screen|printer|router|modem|app|website|site|server|power|network|"
                r"car|engine|heater|furnace|ac|fridge|washer|dryer|dishwasher|battery|signal) "
                r"(?:is|went|goes|keeps going|seems|keeps) (?:\w+ )?(?:slow|down|out|dead|offline|"
                r"off|frozen|blank|black|broken|not|flickering|beeping|making)\b",
            ),
            _g(
                "i i've we we've have already just",
                r"\b(?:i|i've|we|we've|i have|we have)(?: already| just| even)? (?:cleaned|"
                r"changed|swapped|bled|forgotten|paired|replaced|tried|checked|restarted|"
                r"rebooted|unplugged|updated|reinstalled|cleared|charged|tested|plugged)\b",
            ),
            _g(
                "still",
                r"\bstill (?:not|doesn't|isn't|won't|can't|broken|stuck|the same|"
                r"happening|getting|showing|dropping|slow|flashing|blinking)\b",
            ),
            _g(
                "broken broke stuck frozen",
                r"\b(?:broken|broke|stuck|frozen)\b.*\b(?:after|"
                r"since|when|even though|every time)\b",
            ),
        ),
    ),
    "comparison": OpenIntent(
        gated=(
            _g(
                "should better cheaper which smarter whats what's",
                r"\b(?:should (?:i|we)|(?:i|we) should|is it "
                r"(?:cheaper|better|smarter|faster|safer)|whats better|what's better|which is|"
                r"which one is|which would be|would it be (?:cheaper|better))\b.*\bor\b",
            ),
        ),
        phrases=_p("""
            would be better
            be cheaper
            work out cheaper
            cheaper overall
            be better off
            better off
            compare
            comparing
            comparison
            pros and cons
            trade off
            trade offs
            tradeoff
            tradeoffs
            trade-off
            trade-offs
            advantages and disadvantages
            better deal
            better option
            better choice
            better value
            better plan
            better investment
            worth it
            worth upgrading
            worth switching
            worth the extra
            worth the money
            or would it be
            or should i
            or is it better
            is it better to
            would it be better
            which is better
            which one is better
            which is cheaper
            which one is cheaper
            which would be better
            which makes more sense
            makes more sense
            which one should i
            should i go with
            should i choose
            should i pick
            should i switch
            should i buy
            should i lease
            should i refinance
            should i upgrade
            should i keep
            should i wait
            more cost effective
            cheaper in the long run
        """),
    ),
    "planning": OpenIntent(
        gated=(
            _g("budget budget's", r"\bbudget", min_numbers=2),
            _g(
                "veggie vegan vegetarian coeliac celiac gluten allergic allergy halal kosher",
                r"\b(?:veggie|vegan|vegetarian|coeliac|celiac|gluten|allergic|allergy|halal|"
                r"kosher)\b.*\b(?:people|guests|of us|of them|adults|kids)\b|\b(?:people|guests|"
                r"of us|of them|adults|kids)\b.*\b(?:veggie|vegan|vegetarian|coeliac|celiac|"
                r"gluten|allergic|allergy|halal|kosher)",
                min_numbers=2,
            ),
        ),
        phrases=_p("""
            help figuring out
            figuring out which
            figure out which
            plan a
            plan my
            plan the
            plan out
            plan our
            itinerary
            step by step
            steps to
            steps for
            strategy
            roadmap
            optimize
            optimise
            prioritize
            prioritise
            help me plan
            help me figure out
            help me decide
            help me organize
            help me organise
            help me work out
            help me budget
            help me choose
            help me structure
            help me prepare
            how should i structure
            how should i organize
            how should i plan
            how should i approach
            how should i split
            how should i schedule
            how should i budget
            how should i prioritize
            how should i handle
            schedule around
            within my budget
            within a budget
            on a budget
            meal plan
            workout plan
            study plan
            training plan
            timeline
        """),
    ),
    "analysis": OpenIntent(
        phrases=_p("""
            wasn't me
            it wasn't me
            i didn't authorize
            didn't authorize
            used in another state
            evaluating
            an argument
            analytical
            could be the reasons
            what could be the
            possible reasons
            what are the reasons
            odd one out
            chest pain
            shortness of breath
            can't breathe
            trouble breathing
            allergic reaction
            overdose
            unconscious
            severe pain
            my best options
            best options
            what are my choices
            hacked
            unauthorized charges
            purchases i didn't make
            charges i didn't make
            fraudulent
            need to get to
            by tomorrow morning
            is the following sentence plausible
            what can i do
            on top or
            or does it
            is something wrong
            something wrong with
            presents with
            most likely cause
            most likely diagnosis
            best next step
            most appropriate
            most likely to
            which setup
            best test
            controlled experiment
            independent variable
            dependent variable
            logically equivalent
            predicate logic
            translation into
            which conclusion
            best supports
            strengthen the argument
            weaken the argument
            formal logic
            abstract algebra
            econometrics
            college mathematics
            elementary mathematics
            high school mathematics
            high school statistics
            college physics
            high school physics
            college chemistry
            machine learning
            valid argument
            logically follows
            conclusion follows
            is that ok
            is that safe
            safe to take
            take together
            all together
            i also take
            interaction
            will i lose
            would i lose
            am i still eligible
            still eligible
            do i still qualify
            qualify
            how can you find
            using only
            explain the procedure
            balance scale
            bill went from
            nothing changed
            doubled
            tripled
            even allowed
            is that even
            allowed to keep
            get hit with
            penalty
            penalties
            am i supposed to
            what are my rights
            my rights
            older than
            younger than
            taller than
            shorter than
            explain your reasoning
            your reasoning
            weaknesses
            weakness
            flaw in
            flaws in
            fallacy
            assumption
            assumptions
            logically
            must some
            must all
            measure exactly
            second youngest
            second oldest
            is that okay
            is it okay to take
            can i take
            should i take
            i also have
            kidney disease
            does not belong
            doesn't belong
            and why
            is it possible that
            which one is lying
            who is lying
            knights and knaves
            if all
            some are
            none of the
            must be true
            could be true
            essay
            in your opinion
            argue for
            argue against
            why do you think
            what caused
            root cause
            which statement
            best explains
            evaluate the
            compare and contrast
            critically
            derive
            optimal
            counterexample
            is that allowed
            am i owed
            is that legal
            does it matter
            what are my options
            how should i think
            how do i figure out
            how do we split
            split it fairly
            what should i do
            which metrics
            possible orders
            how would you
            what would you recommend given
            given that
            trade off
            interactions
            eligible
            liable
            entitled
            compensation
            should i worry
            explain why
            explain how
            in detail
            what would happen if
            what if
            analyze
            analyse
            analysis
            evaluate
            implications
            implication
            consequences
            prove
            proof
            logic puzzle
            puzzle
            riddle
            deduce
            infer
            justify
            assess
            reason through
            reasoning behind
            critique
            hypothesis
            am i eligible
            am i liable
            am i entitled
            is it legal
            is it safe to
            tax implications
            tax deduction
            tax bracket
            drug interaction
            interact with
            think through
            break it down
            break this down
            in depth
            detailed explanation
        """),
        gated=(
            _g(
                "why",
                r"\bwhy (?:does|do|is|are|did|would|was|were|can't|won't|doesn't|isn't|am|"
                r"has|have|should)\b(?: [\w']+){5,}",
            ),
        ),
    ),
    "faq": OpenIntent(
        phrases=_p("""
            soonest
            earliest
            next available
            when's my
            when is my next
            do i need to
            can i split
            split the payment
            two cards
            how late
            open tonight
            open till
            open until
            can i bring
            can i park
            are dogs allowed
            dogs allowed
            pets
            pet policy
            available on
            available today
            available tomorrow
            available this
            any availability
            have availability
            any openings
            nearest
            closest
            where's the
            where is the
            check on my
            my refund
            status of my refund
            why fi password
            wi fi password
            out for delivery
            delivery yet
            the number for
            did my payment
            go through
            gone through
            right number
            is this the
            outage
            an outage
            still available
            is it still available
            routing number
            claim number
            policy number
            member id
            group number
            when i'm booked
            when am i booked
            booked in
            my next appointment
            next appointment
            do you guys
            did my package
            did my order
            ship yet
            shipped yet
            has my
            has it shipped
            where's my
            tracking info
            take apple pay
            apple pay
            credit cards
            what year
            how tall
            how far is
            how old is
            when did
            which country
            what country
            what language
            largest
            smallest
            tallest
            longest
            highest
            stand for
            chemical symbol
            boiling point
            freezing point
            how many legs
            how many players
            who played
            who sang
            who directed
            who founded
            who discovered
            who painted
            what color
            what colour
            what currency
            capital city
            is it open
            are they open
            what time is
            what is the name
            what's the name
            how do you spell
            how do i get to
            directions to
            does the hotel have
            does it have
            do they have
            what's my
            what is my
            is my flight
            is my prescription
            prescription ready
            on time
            how many ounces
            how many days
            how many feet
            how many inches
            how many cups
            how many grams
            how many minutes
            how many hours
            how many weeks
            what time
            hours
            open today
            open tomorrow
            open on
            open late
            open now
            are you open
            are you closed
            when do you open
            when do you close
            when does
            located
            location
            address
            phone number
            parking
            wifi password
            do you deliver
            do you take
            do you accept
            do you have
            do you offer
            do you ship
            do you sell
            do you carry
            do you allow
            do you serve
            do you provide
            do you support
            do you do
            how much is
            how much are
            how much does
            how much do
            how much for
            what's the price
            what is the price
            what's the cost
            what is the cost
            what's the fee
            what is the fee
            what are the fees
            what's the rate
            what's the deposit
            what's the minimum
            what's the limit
            what's the deadline
            what's the wait time
            what's the policy
            what's your policy
            what's my balance
            my balance
            due date
            account number
            order number
            confirmation number
            tracking number
            credit limit
            when is my
            status of my
            where is my
            track my
            is my order
            is my package
            is my payment
            is my refund
            capital of
            who wrote
            who invented
            who painted
            who discovered
            what day is
            what's the date
            the weather
            how long does
            how long will
            do i need
            can i walk in
            walk in
            walk ins
            what floor
            what gate
            which gate
            what terminal
            which terminal
            menu
            specials
            vegan options
            gluten free
            dress code
            check in time
            check out time
            checkout time
            pet friendly
            pets allowed
            how many points
            is there a
            are there any
            what's your
            what is your
            what are your
        """),
    ),
    "transform": OpenIntent(
        phrases=_p("""
            on a scale of
            rate each
            score each
            sort these
            into categories
            sort the
            group these
            label each
            extract
            rewrite
            rephrase
            paraphrase
            reword
            translate
            classify
            categorize
            categorise
            proofread
            fix the grammar
            correct the grammar
            make this shorter
            make this friendlier
            make it shorter
            make it friendlier
            make this more
            make it more
            turn this into
            convert this to
            convert this into
            format this as
            shorten this
            simplify this
            tone down
        """),
    ),
    "explain": OpenIntent(
        gated=(
            # "what is photosynthesis": one concept to explain
            _g(
                "what what's whats define explain",
                r"^(?:what is|what are|what's|whats|define|explain) (?!(?:your|my|our|the|his|her|"
                r"their|its|it|that|this|there|up)\b)\w+(?: \w+)?$",
            ),
        ),
        phrases=_p("""
            what happens next
            what's next
            next steps
            what now
            what does it cover
            what does that cover
            does it cover
            cover exactly
            what's the process
            what is the process
            policy
            policies
            what happens if
            what's included
            what is included
            what does it include
            what's covered
            what is covered
            explain
            what does it mean
            what does that mean
            what is a
            what is an
            what's a
            what's an
            how does the
            how do the
            how does it work
            tell me about
            tell me more about
        """),
    ),
    "summarize_inline": OpenIntent(
        gated=(
            _g(
                "summarize summarise summary",
                r"\bsummari[sz]e (?:this|the following|that) "
                r"(?:paragraph|sentence|sentences|text|passage|quote|review|email|message|"
                r"note|tweet|post|comment)\b|\bsummari[sz]e the (?:plot|story|history|"
                r"idea|concept|main idea|book|movie|film) of\b",
            ),
        ),
    ),
    "trivia": OpenIntent(
        phrases=_p("""
            name three
            name two
            name four
            name five
            name the
            in which year
            in what year
            in which sport
            in which country
            in which city
            what was the name of
            what is the name of
        """),
        gated=(
            _g(
                "who which when where how what",
                r"^(?:q |question |trivia )?(?:who|which|when|where|how (?:many|tall|far|"
                r"old|long|big|deep|high|fast|hot|cold)|what (?:year|country|city|is the "
                r"(?:capital|largest|smallest|tallest|longest|highest|deepest|fastest|oldest|"
                r"biggest|most|least|name|currency|population|speed|boiling|freezing|chemical)|"
                r"was the|were the|language|color|colour|planet|element|ocean|continent))\b"
                r"(?!.*\b(?:i|my|me|we|our|us|you|your|i'm|i've|we're)\b)",
            ),
        ),
    ),
    "draft": OpenIntent(
        phrases=_p("""
            write a quick
            write a short
            write a text
            write an email
            write a note
            write a message
            write me a
            write a letter
            write a poem
            write a haiku
            write a story
            write a tweet
            write a review
            write a thank
            write a cover letter
            write a toast
            write a speech
            draft a
            draft an
            draft me
            compose a
            compose an
            text to my
            email to my
            message to my
            note to my
        """),
    ),
    "recall": OpenIntent(
        phrases=_p("""
            which one was
            how much was it
            was the claim
            read me back
            read back
            read it back
            whole order
            whole itinerary
            start to finish
            all the stuff
            i listed
            i added
            the things i
            given everything
            everything i've told you
            what did he say
            what did she say
            last time
            remind me who
            who's going
            we already
            we tried
            all the steps
            we made
            final list
            all the changes
            the changes
            did i get
            did i
            was that
            were the
            you put
            we decided
            we picked
            we chose
            as it stands
            everything we
            checklist of everything
            which ones did
            the two options
            those options
            that credit
            the credit you
            what we
            the document
            the report
            the text above
            the passage
            the story
            the meeting
            the email
            the thread
            the author
            the article say
            mentioned
            you told me
            i told you
            we talked about
            we discussed
            we agreed
            we said
            what was the
            what were the
            who was the
            when did i
            did you say
            did we
            from before
            from earlier
            the part about
            that part
            what did you say
            what was that
            what did we
            you said earlier
            you said before
            you mentioned
            earlier
            at the start
            at the beginning
            the first thing i asked
            did i say
            i gave you
            you gave me
            go back over
            going back to
            remind me
            again
            so far
            everything i need to remember
            final plan
            list every
            list all
            all the things
            still pending
            still waiting
            we set up
            the things we
            what does it say
            according to
            in the document
            the article
            the contract
            the lease
            the transcript
            this call
            based on that
            based on this
            above
            which of those
            which ones
            all of it
            everyone
            everybody's
        """),
    ),
    "qa_format": OpenIntent(
        phrases=_p("""
            answer yes or no
            true or false
        """),
        gated=(
            _g("instruction", r"^\s*instruction\s*:(?:.|\n)*\n\s*context\s*:", raw=True),
            _g("q question", r"^\s*(?:q|question)\s*:(?:.|\n)*\n\s*(?:a|answer)\s*:\s*$", raw=True),
        ),
    ),
    "instruction_format": OpenIntent(
        phrases=_p("""
            below is an instruction that describes a task
            write a response that appropriately completes the request
        """),
    ),
    "task_request": OpenIntent(
        gated=(_g("need", r"(?<!do )\bi need to\b"),),
        phrases=_p("""
            put me on
            sign me up
            add me to
            can you add
            can you put
            walk me through
            show me how to
            set up
            setting up
            how do i
            how can i
            i want to
            i'd like to
            i would like to
            can you recommend
            could you recommend
            help me
            i'm trying to
            i am trying to
        """),
    ),
    "multiple_choice": OpenIntent(
        phrases=_p("""
            most plausible continuation
            plausible continuation
            the most plausible
            best ending
            how does the story end
            the following are multiple choice questions
            choose the best ending
            pick the most likely continuation
            most likely continuation
            complete the sentence
            which ending
            choose the correct answer
            select the correct answer
        """),
        gated=(
            _g(NUM, r"(?:^|\n)\s*0\s*[:.)]\s.*\n\s*1\s*[:.)]\s", raw=True),
            # options "(b) ... (c)" or "B. ... C." : look only when a lone b or c is there
            _g("b c", r"(?:^|\s|\()b[).:]\s(?:.|\n)*?(?:^|\s|\()c[).:]\s", raw=True),
        ),
    ),
    "spelled_out": OpenIntent(
        gated=(
            _g(
                NUM + " a b c d e f g h i j k l m n o p q r s t u v w x y z",
                r"^(?:(?:[a-z]|zero|oh|one|two|three|four|five|six|seven|eight|nine|ten|eleven|"
                r"twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|"
                r"thirty|forty|fifty|sixty|seventy|eighty|ninety|\d+)(?:\s|$)){4,}$",
            ),
            _g("as", r"\b[a-z] as in [a-z]+\b"),
            _g(
                NUM,
                r"^(?:(?:it's|its|it is|my|the|number|is|account|phone|zip|code|pin|and|"
                r"dash|point)\s)*(?:(?:zero|oh|one|two|three|four|five|six|seven|eight|nine|"
                r"ten|double|triple|\d+)(?:\s|$)){3,}",
            ),
            _g("a b c d e f g h i j k l m n o p q r s t u v w x y z", r"(?:\b[a-z]\b\s?){3,}"),
        ),
    ),
    "correction": OpenIntent(
        phrases=_p("""
            i moved
            not my
            anymore
            that's not
            wrong address
            new address
            actually
            instead
            change it
            rather
            but can
            but could
            can we make it
            could we make it
            move it
        """),
    ),
    "follow_up": OpenIntent(
        phrases=_p("""
            that
            it
            this
            those
            them
            these
            the other
            the first
            the second
            the third
            the last
            option
            one
            why
            how come
            what about
            how about
            what if
            instead
            same
            then
            next
            else
            more
            further
            also
            too
            again
            go ahead
            do that
            try
            continue
            and
            or
            but
            still
            didn't
            doesn't
            did not
            does not
            work
            worked
            explain
            elaborate
            go on
            keep going
        """),
    ),
}

BUILTIN_INTENTS = frozenset(CLOSED_INTENTS) | frozenset(OPEN_INTENTS)
